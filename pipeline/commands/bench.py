"""``twostage bench CONFIG [key=value ...]``: the evidence table.

Every task's data set and store once, every row (a head from the store, or end to end) for every seed, each
in its own process; then one table (accuracy mean ± std over seeds, cost = extraction + training seconds,
peak memory), one plot (accuracy x cost) and each method's claim stated reproduced or not, with its numbers.
Written to ``out``: results.md, results.json, bench.png. A stopped bench resumes where it was.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stages.core.config import config_keys, load_config, to_dict


def build_parser() -> argparse.ArgumentParser:
    from stages.bench.config import BenchConfig

    keys = "\n".join(f"  {k}" for k in config_keys(BenchConfig))
    p = argparse.ArgumentParser(
        prog="twostage bench",
        description=(__doc__ or "").split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: twostage bench configs/bench/claims.yaml seeds=[0] out=runs/bench1\n"
        f"Ready configs: configs/bench/ (smoke.yaml: two rows, one seed, a minute).\nConfig keys:\n{keys}",
    )
    p.add_argument("config", help="bench YAML (configs/bench/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides (seeds=[0], out=runs/b2)")
    p.add_argument(
        "--rows",
        default=None,
        help="run only these rows (comma-separated labels; their dependencies come along)",
    )
    p.add_argument("--tasks", default=None, help="run only these tasks (comma-separated names)")
    p.add_argument("--verbose", action="store_true", help="show every job's own output")
    return p


def select(cfg: Any, rows: str | None, tasks: str | None) -> Any:
    """``cfg`` with only the named rows (and the rows they are built from) and tasks."""
    from stages.core.errors import ConfigError

    labels = {r.label: r for r in cfg.rows}
    names = {t.name for t in cfg.tasks}
    want_rows = [x.strip() for x in rows.split(",")] if rows else list(labels)
    want_tasks = [x.strip() for x in tasks.split(",")] if tasks else list(names)
    unknown = [x for x in want_rows if x not in labels] + [x for x in want_tasks if x not in names]
    if unknown:
        raise ConfigError(f"--rows/--tasks name {unknown}, not in the config; rows: {sorted(labels)}, "
                          f"tasks: {sorted(names)}")  # fmt: skip
    keep: set[str] = set()
    todo = list(want_rows)
    while todo:
        label = todo.pop()
        if label not in keep:
            keep.add(label)
            todo += [d for d in (labels[label].init_from, labels[label].backbone_from) if d]
    cfg.tasks = [t for t in cfg.tasks if t.name in want_tasks]
    kept = []
    for r in (r for r in cfg.rows if r.label in keep):
        if r.tasks and not set(r.tasks) & set(want_tasks):
            continue  # a row of other tasks only (an empty list would mean every task)
        r.tasks = [t for t in r.tasks if t in want_tasks]
        kept.append(r)
    cfg.rows = kept
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from stages.bench import report
    from stages.bench.config import BenchConfig
    from stages.bench.runner import run_bench

    cfg = select(load_config(BenchConfig, args.config, args.overrides), args.rows, args.tasks)
    t0 = time.perf_counter()
    records = run_bench(cfg, verbose=args.verbose)
    cells = report.summarise(records)
    verdicts = report.claims(cells, cfg.claims)
    out = Path(cfg.out)
    md = (f"{report.table(cells)}\n\nAccuracy: held-out top-1 at the end of training, mean ± std over seeds "
          f"{cfg.seeds}. Cost: seconds of extraction (once per task) + training, including the rows a row "
          f"is built from.\n\n{report.claims_text(verdicts)}\n")  # fmt: skip
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(
        {"records": records, "cells": [asdict(c) for c in cells], "claims": [asdict(v) for v in verdicts],
         "config": to_dict(cfg)}, indent=1, default=str))  # fmt: skip
    report.plot(cells, out / "bench.png")
    print(
        f"\nbench ({time.perf_counter() - t0:.0f} s in all):\n{md}\n{out}/results.md, results.json, bench.png"
    )
    return 0
