"""``twostage sources FORMAT ANNOTATIONS... VIDEO_ROOT [-o list.csv]``: a data set's official annotation
files -> a source list (``id,path,label,split,start,end,meta``) that stage one reads as ``source:``.

The same rows come straight from ``source: "FORMAT:ANNOTATIONS[,MORE]#VIDEO_ROOT[#option=value]"`` in an
extract config; the list file is for looking at, filtering or editing them. ``--list`` prints the formats.

Examples:
    twostage sources ucf101 /data/ucf101/ucfTrainTestlist /data/ucf101/UCF-101 -O fold=2 -o ucf101_2.csv
    twostage sources epic100 EPIC_100_train.csv EPIC_100_validation.csv EPIC_100_verb_classes.csv \\
        EPIC_100_noun_classes.csv /data/EPIC-KITCHENS > epic.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

COLUMNS = ("id", "path", "label", "split", "start", "end", "meta")
_IMPLIED = ("split", "group")  # meta keys that have their own column, or that reading the list recomputes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twostage sources",
        description="Turn a data set's official annotation files into a source list for `twostage extract`: "
        "ids, labels, train/val/test splits, segments (start/end seconds) and extra labels (meta).",
        epilog="Formats: kinetics, ssv2, ucf101, hmdb51, epic100, charades (`--list` shows their options). "
        "In a config, `source: FORMAT:ANNOTATIONS[,MORE]#VIDEO_ROOT[#option=value]` reads the same rows.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="FORMAT ANNOTATIONS... VIDEO_ROOT",
        help="the format, its annotation files or folders, then the folder holding the videos",
    )
    parser.add_argument(
        "-O",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a format option, e.g. fold=2 (ucf101/hmdb51), label=noun (epic100), missing=drop",
    )
    parser.add_argument("-o", "--out", help="write here (.csv, or .jsonl) instead of standard output")
    parser.add_argument("--split", choices=("train", "val", "test"), help="keep only the rows of this split")
    parser.add_argument(
        "--classes",
        help="also write the class order here (default with -o: classes.txt next "
        "to the list, when the format fixes the order)",
    )
    parser.add_argument("--list", action="store_true", help="print the formats and their options")
    return parser


def _list_formats() -> int:
    from stages.video.adapters import ADAPTERS, options_of

    for name in ADAPTERS.names():
        adapter = ADAPTERS.get(name)
        options = ", ".join(f"{k}={v!r}" for k, v in options_of(adapter).items())
        print(f"{name:<10} {(adapter.__doc__ or '').strip().splitlines()[0]}\n{'':<10} options: {options}")
    return 0


def _options(pairs: list[str]) -> dict[str, str]:
    from stages.core.errors import SourceError

    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise SourceError(f"--option {pair!r} is not KEY=VALUE; e.g. -O fold=2")
        out[key.strip()] = value.strip()
    return out


def record(item: Any) -> dict[str, Any]:
    """One output row of a :class:`~stages.video.sources.VideoItem`."""
    meta = {k: v for k, v in item.meta.items() if k not in _IMPLIED}
    return {
        "id": item.id,
        "path": item.path,
        "label": item.label,
        "split": item.meta.get("split"),
        "start": item.start,
        "end": item.end,
        "meta": meta or None,
    }


def render(items: list[Any], jsonl: bool) -> str:
    """The list file's text: CSV (``meta`` as JSON text) or JSON lines."""
    rows = [record(it) for it in items]
    if jsonl:
        return "".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        meta = json.dumps(r["meta"], separators=(",", ":")) if r["meta"] else ""
        writer.writerow(["" if r[c] is None else r[c] for c in COLUMNS[:-1]] + [meta])
    return out.getvalue()


def _write_classes(path: Path, classes: list[str]) -> None:
    from stages.core.errors import SourceError

    text = "".join(f"{c}\n" for c in classes)
    if path.exists() and path.read_text(encoding="utf-8") != text:
        raise SourceError(
            f"{path} exists with another class order; remove it, or pass --classes OTHER.txt (stage one "
            "reads classes.txt next to the list, so two lists in one folder must share their classes)"
        )
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.list:
        return _list_formats()
    if len(a.inputs) < 3:
        parser.error("expected FORMAT, at least one annotation file or folder, and VIDEO_ROOT (or --list)")
    from stages.video import adapters, sources

    name, annotations, videos = a.inputs[0], a.inputs[1:-1], a.inputs[-1]
    listing = adapters.adapt(name.lower(), annotations, videos, **_options(a.option))
    for note in listing.notes:
        print(f"note: {note}", file=sys.stderr)
    listing.notes = []
    items, classes = sources.read_listing(listing, f"{name} {' '.join(annotations)}")
    if a.split:
        items = [it for it in items if it.meta.get("split") == a.split]
    text = render(items, jsonl=bool(a.out and a.out.endswith(".jsonl")))
    if a.out:
        Path(a.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    classes_file = a.classes or (a.out and listing.classes and Path(a.out).parent / "classes.txt")
    if classes_file:
        _write_classes(Path(classes_file), classes)
    splits = Counter(it.meta.get("split") or "none" for it in items)
    segments = sum(1 for it in items if "group" in it.meta)
    print(
        f"{len(items)} videos ({', '.join(f'{k} {n}' for k, n in sorted(splits.items()))}; {segments} "
        f"segments; {len(classes)} classes){f' -> {a.out}' if a.out else ''}"
        f"{f', classes -> {classes_file}' if classes_file else ''}",
        file=sys.stderr,
    )
    return 0
