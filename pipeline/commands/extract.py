"""``twostage extract CONFIG [key=value ...]`` (also ``python -m stages.extract``): stage one.

Runs here, on a dask cluster (``cluster=local workers=2``, or ``cluster.kind``), or as one part of a plain
job array (``--part I/N``, then ``twostage commit STORE``). Prints a summary with each component's
throughput and writes it, with the resolved config, next to the store (``STORE.extract.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.cluster import expand_shorthand
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


def print_summary(s: dict[str, Any], store: str) -> None:
    """The end-of-run lines: what was extracted, each component's rate, every failed video."""
    if s["committed"] == 0 and s["failed"] == 0:
        print(f"nothing to extract: all {s['skipped']} videos of the list are already committed in {store}")
        return
    print(
        f"extracted {s['committed']} videos ({s['frames']} frames) into {store} in {s['wall_s']:.1f} s: "
        f"{_rate(s['frames_per_s'])} frames/s, {s['videos_per_s']} videos/s; "
        f"skipped {s['skipped']} already committed"
    )
    print(
        f"  components (frames per busy second): decode {_rate(s['decode_frames_per_busy_s'])} (per "
        f"worker), model {_rate(s['model_frames_per_s'])}, write {_rate(s['write_frames_per_s'])}"
    )
    if s["failures"]:
        print(f"  {len(s['failures'])} failed videos:")
        for f in s["failures"]:
            print(f"    {f['id']}  {f['path']}  [{f['stage']}] {f['error'].splitlines()[0][:160]}")


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value}"


def failure_exit(s: dict[str, Any], max_fraction: float, metrics: Path) -> int:
    """Exit status of a run: 1 when more than ``max_fraction`` of its videos failed."""
    bad = s["failed"] / max(1, s["videos"])
    if bad > max_fraction:
        print(
            f"error: {s['failed']}/{s['videos']} videos failed ({bad:.0%} > run.max_failure_fraction="
            f"{max_fraction}); see the list above and {metrics}",
            file=sys.stderr,
        )
        return 1
    return 0
