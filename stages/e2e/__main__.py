"""``python -m stages.e2e ...`` is ``twostage e2e ...`` (the command line lives in ``pipeline``).

Under ``torchrun --nproc_per_node N -m stages.e2e CONFIG`` every process runs this (DDP).
"""

import sys

from pipeline.cli import entry

if __name__ == "__main__":
    entry(["e2e", *sys.argv[1:]])
