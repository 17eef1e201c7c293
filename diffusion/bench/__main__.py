"""``python -m diffusion.bench``."""

import sys

from diffusion.bench.lessons import main

if __name__ == "__main__":
    sys.exit(main())
