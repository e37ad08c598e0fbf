"""Plain helpers shared by the source-list reader (``stages/video/sources.py``) and the annotation-format
adapters: split names, segment ids, timestamps, the ``meta`` cell, and finding a video under a root.

Nothing here imports :mod:`stages.video.sources` (the reader imports this module), so rows are plain
dicts until the reader turns them into :class:`~stages.video.sources.VideoItem`.

Example:
    >>> normalise_split("validation", "list.csv:3")
    'val'
    >>> segment_id("P01_01", 12.5, 15.25)
    'P01_01__12.5-15.25'
    >>> timestamp_seconds("00:01:02.50", "x")
    62.5
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any

from stages.core.errors import SourceError

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "training": "train",
    "valid": "val",
    "validate": "val",  # Kinetics-700-2020 file names (validate.csv)
    "validation": "val",  # Something-Something v2, EPIC-Kitchens-100
    "testing": "test",
}
VIDEO_EXTENSIONS = frozenset({"mp4", "avi", "mkv", "webm", "mov", "m4v", "mpg", "mpeg", "flv", "wmv"})


def normalise_split(value: object, where: str) -> str | None:
    """``train`` / ``val`` / ``test`` (aliases ``validation``, ``validate``, ``valid``, ``training``,
    ``testing``; any case); empty or missing -> ``None``; anything else raises :class:`SourceError`."""
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int)):
        if value is None:
            return None
        raise SourceError(
            f"{where}: split={value!r} is a {type(value).__name__}; expected train, val or test"
        )
    text = str(value).strip().lower()
    if not text:
        return None
    split = _SPLIT_ALIASES.get(text, text)
    if split not in SPLITS:
        raise SourceError(
            f"{where}: split={value!r} is not a known split; expected one of {', '.join(SPLITS)} "
            f"(also accepted: {', '.join(sorted(_SPLIT_ALIASES))}); fix the split column"
        )
    return split


def split_from_name(name: str) -> str | None:
    """The split a file's name states (``EPIC_100_validation.csv`` -> ``val``), or ``None``."""
    stem = Path(name).name.lower()
    for word, split in (("train", "train"), ("valid", "val"), ("val", "val"), ("test", "test")):
        if re.search(rf"(^|[^a-z]){word}", stem):
            return split
    return None


def parse_meta(value: object, where: str) -> dict[str, Any]:
    """The ``meta`` cell of a list row: a JSON object (text in CSV, an object in JSONL); empty -> ``{}``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise SourceError(f"{where}: meta is not valid JSON ({e.msg}); expected a JSON object") from None
    if not isinstance(value, dict):
        raise SourceError(f"{where}: meta={value!r} is a {type(value).__name__}; expected a JSON object")
    return dict(value)


def seconds_text(seconds: float) -> str:
    """``12.5`` -> ``'12.5'``, ``3.0`` -> ``'3'``: millisecond precision, no trailing zeros."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def segment_id(file_id: str, start: float | None, end: float | None) -> str:
    """The default id of one segment of a file: ``<file id>__<start>-<end>`` (``0`` / ``end`` if open)."""
    head = "0" if start is None else seconds_text(start)
    tail = "end" if end is None else seconds_text(end)
    return f"{file_id}__{head}-{tail}"


def timestamp_seconds(text: str, where: str) -> float:
    """``HH:MM:SS.ff`` (also ``MM:SS.ff`` or plain seconds) -> seconds."""
    parts = str(text).strip().split(":")
    try:
        if len(parts) > 3 or any(not p for p in parts):
            raise ValueError
        values = [float(p) for p in parts]
    except ValueError:
        raise SourceError(
            f"{where}: timestamp {text!r} is not HH:MM:SS.ff; expected e.g. 00:01:02.50"
        ) from None
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    if not seconds >= 0:
        raise SourceError(f"{where}: timestamp {text!r} is negative; expected HH:MM:SS.ff")
    return seconds


def read_csv(path: Path, required: tuple[str, ...], delimiter: str = ",") -> list[tuple[str, dict[str, str]]]:
    """``(where, row)`` of a CSV file with a header holding ``required`` columns (cells stripped)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        fields = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in fields]
        if missing:
            raise SourceError(
                f"{path}: no column(s) {missing}; found {fields}; expected a header with {list(required)}"
            )
        reader.fieldnames = fields
        return [
            (f"{path}:{reader.line_num}", {k: (v or "").strip() for k, v in row.items() if k is not None})
            for row in reader
        ]


class VideoIndex:
    """Finds a video under ``root``: a given relative path first, else by file stem anywhere below
    ``root`` (the tree is walked once, on the first miss), else the first guess (extraction then records
    the video as missing).

    Example:
        >>> index = VideoIndex("/data/kinetics")  # doctest: +SKIP
        >>> index.find("abc_000010_000020", "train/abc_000010_000020.mp4")  # doctest: +SKIP
        '/data/kinetics/train/dancing/abc_000010_000020.mp4'
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(os.path.abspath(root))
        self._stems: dict[str, str] | None = None

    def find(self, stem: str, *guesses: str) -> str:
        """The path of the video named ``stem``; ``guesses`` (relative to the root) are tried first."""
        for guess in guesses:
            path = self.root / guess
            if path.is_file():
                return str(path)
        found = self.lookup(stem)
        return found or str(self.root / (guesses[0] if guesses else stem))

    def lookup(self, stem: str) -> str | None:
        """The path of a video file named ``stem.<video extension>`` below the root, or ``None``."""
        if self._stems is None:
            self._stems = {}
            for folder, dirs, files in os.walk(self.root):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    base, _, ext = name.rpartition(".")
                    if base and ext.lower() in VIDEO_EXTENSIONS:
                        self._stems.setdefault(base, os.path.join(folder, name))
        return self._stems.get(stem)
