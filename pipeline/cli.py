"""``twostage`` (also ``python -m pipeline``): the user's surface.

Each subcommand hands its arguments to the stage's own ``main(argv)``, so ``twostage extract ...`` and
``python -m stages.extract ...`` are the same program with the same ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable

# subcommand -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": (
        "stages.video.synth",
        "write a labelled synthetic video dataset (appearance, direction, longrange)",
    ),
    "extract": ("stages.extract.stage", "stage one: run a frozen backbone over videos into a feature store"),
    "train": ("stages.train.stage", "stage two: train a temporal head from a feature store"),
    "eval": ("stages.train.evaluate", "evaluate a checkpoint on a feature store"),
    "run": ("pipeline.run", "stage one then stage two (and a results table) from one config"),
    "commit": ("pipeline.commit", "finish a store extracted as --part I/N runs: index and mark complete"),
}


def _inspect(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="twostage inspect",
        description="Describe a feature store: videos, "
        "frames, tensors, bytes per frame, failures, completeness.",
    )
    parser.add_argument("store", help="store path or fsspec URL")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    from store import inspect

    info = inspect(args.store)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    state = (
        "complete"
        if info["complete"]
        else "INCOMPLETE (extraction running, killed, or --part runs not committed)"
    )
    print(f"{info['path']}: {info['format']['name']} v{info['format']['version']}, {state}")
    print(
        f"  backbone {info['backbone'].get('name')}  videos {info['videos']}  views {info['views']}  "
        f"frames {info['frames']}  classes {len(info['classes'])}  parts {len(info['parts'])}"
    )
    print(
        f"  bytes per frame: {info['bytes_per_frame']['total']:,} logical"
        + (f", {info['disk_bytes'] / max(1, info['frames']):,.0f} on disk" if info["disk_bytes"] else "")
    )
    for t in info["tensors"]:
        print(
            f"    {t['name']:<16} {t['kind']:<7} {str(tuple(t['shape'])):<16} {t['dtype']:<8} "
            f"{t['bytes_per_frame']:>10,} B/frame"
        )
    print(f"  failures: {len(info['failures'])}")
    for f in info["failures"]:
        print(f"    {f['id']}  {f['source']}  [{f['stage']}] {str(f['error']).splitlines()[0][:120]}")
    return 0


def _verify(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="twostage verify",
        description="Recompute every video's checksum and scan for NaN/Inf; exit 1 naming each bad video.",
    )
    parser.add_argument("store", help="store path or fsspec URL")
    args = parser.parse_args(argv)
    from store import verify

    problems = verify(args.store)
    for p in problems:
        print(f"BAD {p['id']}: {p['problem']}")
    print(f"{args.store}: {'OK' if not problems else f'{len(problems)} bad videos'}")
    return 1 if problems else 0


LOCAL: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "inspect": (_inspect, "describe a feature store (--json for machines)"),
    "verify": (_verify, "recompute checksums and scan for NaN/Inf"),
}


def _list(kind: str) -> int:
    if kind == "backbones":
        from stages.models import BACKBONES as reg
    else:
        from stages.train.heads import HEADS as reg
    for name in reg.names():
        doc = (reg.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:<48} {doc[0] if doc else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twostage",
        description="Cache multi-layer frozen-backbone video features once; train temporal heads from them.",
        epilog="Run `twostage COMMAND --help` for each command's options.",
    )
    parser.add_argument("--list-backbones", action="store_true", help="print the registered backbones")
    parser.add_argument("--list-heads", action="store_true", help="print the registered heads")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in {**COMMANDS, **{k: v for k, v in LOCAL.items()}}.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    if argv and argv[0] in LOCAL:
        return LOCAL[argv[0]][0](argv[1:])
    args = build_parser().parse_args(argv)
    if args.list_backbones:
        return _list("backbones")
    if args.list_heads:
        return _list("heads")
    build_parser().print_help()
    return 0


def entry() -> None:
    """Console-script entry: errors a user caused print as one clear message, not a traceback."""
    from stages.core.errors import TwostageError

    try:
        sys.exit(main())
    except TwostageError as e:
        print(f"twostage: error: {e}", file=sys.stderr)
        sys.exit(2)
