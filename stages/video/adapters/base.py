"""The adapter registry and what every adapter shares: the ``FORMAT:ANNOTATIONS#VIDEO_ROOT`` spec,
option checking, and what to do with videos that are not on disk.

An adapter is a function ``(annotations: list[Path], videos: Path, **options: str) -> Listing``
registered under a format name; its keyword-only parameters are its options (values arrive as text).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.core.errors import SourceError
from stages.core.registry import Registry

SPEC_EXAMPLE = "ucf101:/data/ucf101/ucfTrainTestlist#/data/ucf101/UCF-101#fold=2"
COMMON_OPTIONS = {"missing": "keep"}  # keep (extraction records absent videos as failures) | drop


@dataclass
class Listing:
    """What an adapter returns: source-list rows and, when the format fixes one, the class order.

    Each row is a dict with ``path`` (absolute), ``id``, ``label`` (or None), ``split``, ``start`` /
    ``end`` (seconds, or None), ``meta`` (a JSON-able dict) and ``where`` (file:line, for messages).
    """

    rows: list[dict[str, Any]]
    classes: list[str] | None = None
    notes: list[str] = field(default_factory=list)  # what a user should know (printed by `twostage sources`)


Adapter = Callable[..., Listing]
ADAPTERS: Registry[Adapter] = Registry("source format", list_flag="sources --list")


def row(
    where: str,
    path: str,
    video_id: str,
    label: str | None,
    split: str | None,
    start: float | None = None,
    end: float | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """One source-list row (see :class:`Listing`)."""
    return {
        "where": where,
        "path": path,
        "id": video_id,
        "label": label,
        "split": split,
        "start": start,
        "end": end,
        "meta": {k: v for k, v in meta.items() if v is not None},
    }


def options_of(adapter: Adapter) -> dict[str, Any]:
    """An adapter's options and their defaults (its keyword-only parameters), plus the common ones."""
    params = inspect.signature(adapter).parameters.values()
    own = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return own | COMMON_OPTIONS


def is_format_spec(spec: str) -> bool:
    """Whether ``spec`` names a registered format (``ucf101:...``) rather than a file, folder or shard."""
    m = re.match(r"([A-Za-z][\w-]*):(?!//)", spec)
    return bool(m) and m.group(1).lower() in ADAPTERS


def parse_spec(spec: str) -> tuple[str, list[str], str, dict[str, str]]:
    """``FORMAT:ANN[,ANN...]#VIDEO_ROOT[#key=value...]`` -> (format, annotations, video root, options)."""
    name, _, rest = spec.partition(":")
    parts = rest.split("#")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SourceError(
            f"source {spec!r} names the format {name!r} but not both its annotation file(s) and its video "
            f"folder; expected FORMAT:ANNOTATIONS[,MORE]#VIDEO_ROOT[#option=value], e.g. {SPEC_EXAMPLE!r}"
        )
    options = {}
    for text in parts[2:]:
        key, eq, value = text.partition("=")
        if not eq or not key.strip():
            raise SourceError(
                f"source {spec!r}: option {text!r} is not key=value (e.g. fold=2, missing=drop)"
            )
        options[key.strip()] = value.strip()
    return name.lower(), [a for a in parts[0].split(",") if a], parts[1], options


def adapt(
    name: str, annotations: list[str | os.PathLike], videos: str | os.PathLike, **options: str
) -> Listing:
    """Run the ``name`` adapter on annotation files/folders and a video root; checks paths and options.

    Raises:
        RegistryError: an unknown format (with close matches).
        SourceError: a missing annotation file or video folder, an unknown option, an unreadable file.
    """
    adapter = ADAPTERS.get(name)
    known = options_of(adapter)
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(f"{k} (default {v!r})" for k, v in known.items())
        raise SourceError(f"format {name!r} has no option(s) {unknown}; its options: {listed}")
    paths = [Path(os.path.abspath(a)) for a in annotations]
    absent = [str(p) for p in paths if not p.exists()]
    if absent or not paths:
        raise SourceError(
            f"format {name!r}: annotation file(s) {absent or '(none)'} do not exist; "
            f"expected the dataset's official annotation files, e.g. {SPEC_EXAMPLE!r}"
        )
    root = Path(os.path.abspath(videos))
    if not root.is_dir():
        raise SourceError(
            f"format {name!r}: video folder {str(root)!r} does not exist; expected the folder the dataset's "
            "videos were downloaded or unpacked into"
        )
    missing = options.pop("missing", COMMON_OPTIONS["missing"])
    if missing not in ("keep", "drop"):
        raise SourceError(f"format {name!r}: missing={missing!r}; expected keep or drop")
    listing = adapter(paths, root, **options)
    return _handle_missing(listing, root, missing)


def _handle_missing(listing: Listing, root: Path, missing: str) -> Listing:
    absent = [r for r in listing.rows if not os.path.exists(r["path"])]
    if not absent:
        return listing
    example = absent[0]["path"]
    if missing == "drop":
        gone = {id(r) for r in absent}
        listing.rows = [r for r in listing.rows if id(r) not in gone]
        listing.notes.append(f"left out {len(absent)} rows whose video is not under {root} (e.g. {example})")
    else:
        listing.notes.append(
            f"{len(absent)} of {len(listing.rows)} videos are not under {root} (e.g. {example}): extraction "
            "will record them as failures; pass the option missing=drop to leave them out"
        )
    return listing


def files_in(annotations: list[Path], pattern: str) -> list[Path]:
    """The annotation paths, with each folder replaced by its files matching ``pattern`` (sorted)."""
    out: list[Path] = []
    for path in annotations:
        out.extend(sorted(path.glob(pattern)) if path.is_dir() else [path])
    return out


def positive_int(value: Any, name: str, fmt: str, allowed: tuple[int, ...] | None = None) -> int:
    """An integer option given as text, checked against ``allowed``."""
    try:
        number = int(value)
        if allowed is not None and number not in allowed:
            raise ValueError
    except (TypeError, ValueError):
        expected = f"one of {list(allowed)}" if allowed else "an integer"
        raise SourceError(f"format {fmt!r}: {name}={value!r}; expected {expected}") from None
    return number
