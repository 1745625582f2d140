"""``python -m shareddb``: the same command as the ``shareddb`` console script."""

import sys

from shareddb.cli import main

if __name__ == "__main__":
    sys.exit(main())
