"""``python -m sfsim``: the same command line as ``sfsim``."""

from sfsim.cli import main

if __name__ == "__main__":
    main()
