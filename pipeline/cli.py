"""``twostage`` (also ``python -m pipeline``, and ``python -m stages.extract`` / ``stages.train`` for those
two commands): the user's surface.

Every command lives in its own module (``pipeline/commands/``, ``pipeline/run.py``, ``pipeline/commit.py``)
with a ``main(argv)``; modules are imported only when their command runs, so ``--help`` answers fast.
Errors a user caused print as one line (``twostage: error: ...``, exit 2), never as a traceback.
Progress goes through ``logging`` (``stages/core/log.py``): ``twostage --verbose COMMAND ...`` shows debug
lines, ``twostage --quiet COMMAND ...`` warnings only; ``TWOSTAGE_LOG_LEVEL`` sets the default.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence

from pipeline.commands import COMMANDS

LOG_FLAGS = {"-v": "DEBUG", "--verbose": "DEBUG", "-q": "WARNING", "--quiet": "WARNING"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twostage")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _list(kind: str) -> int:
    if kind == "backbones":
        print(backbone_listing())
        return 0
    from stages.train.heads import HEADS as reg

    for name in reg.names():
        doc = (reg.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:<48} {doc[0] if doc else ''}")
    return 0


def _tags(family: str | None, arch: str | None) -> list[str]:
    """The pretrained tags open_clip / timm know for ``arch`` (empty for our own entries)."""
    if family == "open_clip":
        import open_clip

        return list(open_clip.list_pretrained_tags_by_model(arch))
    if family == "timm":
        import timm

        return [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
    return []


def backbone_listing() -> str:
    """Every registered backbone: its description, its pretrained tags (the default marked ``*``) and the
    pass-through name that reaches the same model; then how to name any other open_clip / timm model."""
    from stages.models import BACKBONES

    wrap = textwrap.TextWrapper(width=110, initial_indent="    ", subsequent_indent="      ")
    lines = ["registered backbones (backbone.name=NAME; backbone.pretrained=TAG picks another tag):", ""]
    for name in BACKBONES.names():
        build = BACKBONES.get(name)
        family, arch, tag = (getattr(build, k, None) for k in ("family", "arch", "tag"))
        doc = " ".join((build.__doc__ or "").split())
        lines.append(name)
        lines += wrap.wrap(doc) if doc else []
        if family is None:
            lines.append("    pretrained: random init (a test entry)" if name.startswith("test_") else
                         "    pretrained: its own weights, shipped with the package")  # fmt: skip
            continue
        tags = [f"{t}*" if t == tag else t for t in _tags(family, arch)] or [f"{tag}*"]
        lines += wrap.wrap(f"pretrained tags (* = default): {', '.join(tags)}")
        lines.append(f"    same model: backbone.name={family}:{arch} backbone.pretrained={tag}")
    lines += [
        "",
        "any other model, unregistered (weights by tag, or backbone.weights_file=PATH; without either it is",
        "refused unless backbone.random_init=true):",
        "  open_clip:<model>  backbone.pretrained=<tag>   models: open_clip.list_models(); tags: "
        "open_clip.list_pretrained()",
        "  timm:<model>       backbone.pretrained=<tag>   models and tags: timm.list_pretrained() "
        "('<model>.<tag>')",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twostage",
        description="Cache multi-layer frozen-backbone video features once; train temporal heads from them.",
        epilog="Run `twostage COMMAND --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"twostage {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines too (before COMMAND)")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument("--list-backbones", action="store_true", help="print the registered backbones")
    parser.add_argument("--list-heads", action="store_true", help="print the registered heads")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from stages.core import log

    argv = list(sys.argv[1:] if argv is None else argv)
    level = os.environ.get(log.LEVEL_ENV, "INFO")
    while argv and argv[0] in LOG_FLAGS:  # global flags come before the command
        level = LOG_FLAGS[argv.pop(0)]
    log.setup(level)
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
