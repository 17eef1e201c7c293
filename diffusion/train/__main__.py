"""``python -m diffusion.train``."""

import sys

from diffusion.train.loop import main

if __name__ == "__main__":
    sys.exit(main())
