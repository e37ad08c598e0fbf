"""``twostage`` (also ``python -m pipeline``, and ``python -m stages.extract`` / ``stages.train`` for those
two commands): the user's surface.

Every command lives in its own module (``pipeline/commands/``, ``pipeline/run.py``, ``pipeline/commit.py``)
with a ``main(argv)``; modules are imported only when their command runs, so ``--help`` answers fast.
Errors a user caused print as one line (``twostage: error: ...``, exit 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence

from pipeline.commands import COMMANDS


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twostage")
    except PackageNotFoundError:
        return "unknown (not installed)"


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
    parser.add_argument("--version", action="version", version=f"twostage {_version()}")
    parser.add_argument("--list-backbones", action="store_true", help="print the registered backbones")
    parser.add_argument("--list-heads", action="store_true", help="print the registered heads")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    if argv and not argv[0].startswith("-"):
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(
            f"twostage: error: unknown command {argv[0]!r}{hint} Commands: {', '.join(COMMANDS)} "
            "(`twostage --help` says what each does)",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(argv)
    if args.list_backbones:
        return _list("backbones")
    if args.list_heads:
        return _list("heads")
    build_parser().print_help()
    return 0


def entry(argv: Sequence[str] | None = None) -> None:
    """Console-script entry: errors a user caused print as one clear message, not a traceback."""
    from stages.core.errors import TwostageError

    try:
        sys.exit(main(argv))
    except TwostageError as e:
        print(f"twostage: error: {e}", file=sys.stderr)
        sys.exit(2)
