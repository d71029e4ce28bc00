"""Entry point of `python -m maskgan.editing`."""

import sys

from maskgan.editing.cli import main

if __name__ == "__main__":
    sys.exit(main())
