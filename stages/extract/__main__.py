"""``python -m stages.extract ...`` is ``twostage extract ...`` (the command line lives in ``pipeline``)."""

import sys

from pipeline.cli import entry

if __name__ == "__main__":
    entry(["extract", *sys.argv[1:]])
