"""``python -m stages.train CONFIG [key=value ...]``."""

import sys

from stages.train.stage import main

if __name__ == "__main__":
    sys.exit(main())
