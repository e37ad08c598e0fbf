"""``python -m stages.extract CONFIG [key=value ...]``."""

import sys

from stages.extract.stage import main

if __name__ == "__main__":
    sys.exit(main())
