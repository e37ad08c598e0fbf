"""``twostage extract CONFIG [key=value ...]`` (also ``python -m stages.extract``): stage one.

Runs here, on a dask cluster (``cluster=local workers=2``, or ``cluster.kind``), or as one part of a plain
job array (``--part I/N``, then ``twostage commit STORE``). Prints a summary with each component's
throughput and writes it, with the resolved config, next to the store (``STORE.extract.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cluster import expand_shorthand
from pipeline.report import failure_exit, print_summary
from stages.core.config import config_keys, load_config, to_dict
from stages.extract.config import ExtractConfig


def build_parser(prog: str = "twostage extract") -> argparse.ArgumentParser:
    keys = "\n".join(f"  {k}" for k in config_keys(ExtractConfig))
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Stage one: run a frozen image backbone over every video of a source list and write its "
        "multi-layer features into a feature store. Resumes: committed videos are skipped.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: key=value with dotted keys, e.g. store.dtype=int8 backbone.batch_frames=128 "
        "sampling.frames=16; cluster=local workers=2 runs on a local dask cluster.\n"
        f"Config keys:\n{keys}\n\nReady configs: configs/extract/ (and configs/cluster/ for dask).",
    )
    parser.add_argument("config", help="YAML config (configs/extract/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first bad video (debugging)")
    parser.add_argument("--part", help="I/N: extract part I of N (job arrays); then `twostage commit STORE`")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = (
        expand_shorthand(args.overrides)
        + (["run.fail_fast=true"] if args.fail_fast else [])
        + ([f"run.part={args.part}"] if args.part else [])
    )
    cfg = load_config(ExtractConfig, args.config, overrides)
    if cfg.cluster.kind != "none" and cfg.run.part is None:
        from pipeline.cluster import run_cluster  # dask is only imported when asked for

        return run_cluster(cfg)
    from stages.extract.stage import run_extract, summary

    stats = run_extract(cfg)
    s = summary(stats)
    print_summary(s, cfg.store.path)
    suffix = "-" + cfg.run.part.replace("/", "of") if cfg.run.part else ""
    metrics = Path(f"{cfg.store.path.rstrip('/')}.extract{suffix}.json")
    metrics.write_text(json.dumps(s | {"config": to_dict(cfg)}, indent=2, default=str))
    return failure_exit(s, cfg.run.max_failure_fraction, metrics)
