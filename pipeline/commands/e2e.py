"""``twostage e2e CONFIG [key=value ...]`` (also ``python -m stages.e2e``): the end-to-end fallback.

Trains a backbone and a head from decoded videos, with multigrid batch shapes when asked; checkpoints
(``last.pt``, ``best.pt``), ``metrics.jsonl`` and ``curves.png`` go to ``run.out``. ``--print-schedule``
prints the schedule (``--json``: one object per epoch) and exits without training or building a model.
Several GPUs: ``torchrun --nproc_per_node N -m stages.e2e CONFIG`` (``data.batch_size`` is global).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from stages.core.config import config_keys, load_config
from stages.e2e.config import E2EConfig


def build_parser(prog: str = "twostage e2e") -> argparse.ArgumentParser:
    keys = "\n".join(f"  {k}" for k in config_keys(E2EConfig))
    parser = argparse.ArgumentParser(
        prog=prog,
        description="End to end: train a backbone (all or the last N blocks) and a head from decoded videos, "
        "with multigrid batch shapes (multigrid.long_cycle, multigrid.short_cycle). Outputs go to run.out; "
        "a run resumes from run.out/last.pt.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: key=value with dotted keys, e.g. multigrid.long_cycle=true optim.steps=[0,6,9]\n"
        f"Config keys:\n{keys}\n\nReady configs: configs/e2e/. "
        "Multi-GPU: torchrun --nproc_per_node N -m stages.e2e CONFIG",
    )
    parser.add_argument("config", help="YAML config (configs/e2e/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument(
        "--print-schedule",
        action="store_true",
        help="print the multigrid schedule as a table and exit (crops rounded to multigrid.crop_multiple)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="with --print-schedule: one JSON object per epoch; else end with the final figures as JSON",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # flags before or after the overrides
    cfg = load_config(E2EConfig, args.config, args.overrides)
    if args.print_schedule:
        from stages.e2e.multigrid import epoch_records, format_table
        from stages.e2e.stage import schedule_of

        plan = schedule_of(cfg)
        text = "\n".join(json.dumps(r) for r in epoch_records(plan)) if args.json else format_table(plan)
        try:
            print(text, flush=True)
        except BrokenPipeError:  # `... --print-schedule --json | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    from stages.e2e.stage import run_e2e

    result = run_e2e(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, default=str) if args.json else final_line(result))
    return 0


def final_line(r: dict) -> str:
    """One readable line: where the outputs are, and the scores that matter."""
    best = "n/a (no held-out videos)" if r.get("best_top1") is None else f"{r['best_top1']:.4f}"
    plots = ", curves.png" if (Path(r["out"]) / "curves.png").exists() else ""
    return (
        f"trained {r.get('epochs_done')} epochs end to end: best held-out top-1 {best}; "
        f"{r['out']}/best.pt, last.pt, metrics.jsonl{plots}"
    )
