"""``python -m pipeline ...`` is ``twostage ...``."""

from pipeline.cli import entry

if __name__ == "__main__":
    entry()
