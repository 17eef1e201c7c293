"""``python -m diffusion.train``: see :mod:`diffusion.train.cli`."""

import sys

from diffusion.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
