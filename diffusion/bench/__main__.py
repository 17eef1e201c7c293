"""``python -m diffusion.bench``: see :mod:`diffusion.bench.cli`."""

import sys

from diffusion.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
