"""``python -m stages.train ...`` is ``twostage train ...`` (the command line lives in ``pipeline``).

Under ``torchrun --nproc_per_node N -m stages.train CONFIG`` every process runs this (DDP).
"""

import sys

from pipeline.cli import entry

if __name__ == "__main__":
    entry(["train", *sys.argv[1:]])
