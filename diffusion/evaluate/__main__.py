"""``python -m diffusion.evaluate``."""

import sys

from diffusion.evaluate.mnist import main

if __name__ == "__main__":
    sys.exit(main())
