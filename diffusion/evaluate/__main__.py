"""``python -m diffusion.evaluate``: see :mod:`diffusion.evaluate.cli`."""

import sys

from diffusion.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())
