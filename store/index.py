"""The commit and failure logs: append-only JSON lines, each carrying a CRC of its own content.

A line is written with one ``write`` and an ``fsync``; a killed writer can leave at most a torn last
line, which the CRC exposes: readers skip it, and a resuming writer cuts it off (``repair=True``).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import fsspec


def _crc(body: str) -> str:
    return f"{zlib.crc32(body.encode()):08x}"


def write_log_line(path: Path, record: dict[str, Any]) -> None:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    line = (
        json.dumps({"crc": _crc(body), "record": json.loads(body)}, sort_keys=True, separators=(",", ":"))
        + "\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_log(text: str) -> tuple[list[dict[str, Any]], list[int], int, int]:
    """Records, the numbers of bad lines, the byte length of the valid prefix, and the line count."""
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    good_bytes = pos = 0
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        pos += len(line.encode())
        try:
            outer = json.loads(line)
            body = json.dumps(outer["record"], sort_keys=True, separators=(",", ":"))
            ok = outer["crc"] == _crc(body) and line.endswith("\n")
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            records.append(outer["record"])
            if not bad:
                good_bytes = pos
        else:
            bad.append(number)
    return records, bad, good_bytes, len(lines)


def read_log(path: Path | str, *, repair: bool = False) -> tuple[list[dict[str, Any]], list[int]]:
    """Read a log (local path or fsspec URL). ``repair`` truncates a torn tail (writer side only)."""
    if isinstance(path, Path) or "://" not in str(path):
        p = Path(path)
        if not p.exists():
            return [], []
        text = p.read_bytes().decode("utf-8", errors="replace")
    else:
        fs, _, paths = fsspec.get_fs_token_paths(str(path))
        if not fs.exists(paths[0]):
            return [], []
        text = fs.cat_file(paths[0]).decode("utf-8", errors="replace")
    records, bad, good_bytes, n_lines = parse_log(text)
    if repair and bad and bad == list(range(bad[0], n_lines + 1)):
        with open(path, "r+b") as f:  # only a torn tail is repaired; corruption inside is left for verify
            f.truncate(good_bytes)
        bad = []
    return records, bad
