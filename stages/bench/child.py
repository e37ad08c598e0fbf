"""One measured job of ``twostage bench``, run in its own process so that its wall time and peak memory
are its own: ``python -m stages.bench.child {extract|train|e2e} CONFIG.json RESULT.json``.

The parent reads the child's peak resident memory from ``wait4``; the child writes its wall time (imports
excluded) and the stage's own result as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    kind, config_file, result_file = argv
    config = json.loads(Path(config_file).read_text())
    from stages.core.config import from_dict

    if kind == "extract":
        from stages.extract.config import ExtractConfig
        from stages.extract.stage import run_extract, summary

        cfg = from_dict(ExtractConfig, config, source=config_file)
        t0 = time.perf_counter()
        stats = run_extract(cfg)
        seconds, result = time.perf_counter() - t0, summary(stats)
    elif kind == "train":
        from stages.train.config import TrainConfig
        from stages.train.stage import run_train

        cfg = from_dict(TrainConfig, config, source=config_file)
        t0 = time.perf_counter()
        result = run_train(cfg)
        seconds = time.perf_counter() - t0
    elif kind == "e2e":
        from stages.e2e.config import E2EConfig
        from stages.e2e.stage import run_e2e

        cfg = from_dict(E2EConfig, config, source=config_file)
        t0 = time.perf_counter()
        result = run_e2e(cfg)
        seconds = time.perf_counter() - t0
    else:
        raise SystemExit(f"unknown job kind {kind!r}: expected extract, train or e2e")
    Path(result_file).write_text(json.dumps({"seconds": seconds, "result": result}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
