"""``twostage train CONFIG [key=value ...]`` (also ``python -m stages.train``): stage two.

Trains a head from a feature store; checkpoints (``last.pt``, ``best.pt``), ``metrics.jsonl`` and
``curves.png`` go to ``run.out``. Several GPUs: ``torchrun --nproc_per_node N -m stages.train CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from stages.core.config import config_keys, load_config
from stages.train.config import TrainConfig


def build_parser(prog: str = "twostage train") -> argparse.ArgumentParser:
    keys = "\n".join(f"  {k}" for k in config_keys(TrainConfig))
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Stage two: train a temporal head on a feature store (checkpoints, metrics.jsonl and "
        "curves.png go to run.out; a run resumes from run.out/last.pt).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: key=value with dotted keys, e.g. head.name=vivit_fe optim.lr=1e-3 "
        f"head.options.depth=2\nConfig keys:\n{keys}\n\nReady configs: configs/train/. "
        "Multi-GPU: torchrun --nproc_per_node N -m stages.train CONFIG",
    )
    parser.add_argument("config", help="YAML config (configs/train/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--json", action="store_true", help="end with the final figures as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(TrainConfig, args.config, args.overrides)
    from stages.train.stage import run_train

    result = run_train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, default=str) if args.json else final_line(result))
    return 0


def final_line(r: dict[str, Any]) -> str:
    """One readable line: where the outputs are, and the scores that matter."""
    best = "n/a (no held-out videos)" if r.get("best_top1") is None else f"{r['best_top1']:.4f}"
    last = "" if r.get("top1") is None else f", last held-out top-1 {r['top1']:.4f}"
    return (
        f"trained {r.get('epochs_done')} epochs: best held-out top-1 {best}{last}; "
        f"{r['out']}/best.pt, last.pt, metrics.jsonl, curves.png"
    )
