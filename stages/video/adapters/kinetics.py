"""Kinetics-400/600/700 annotation CSVs -> source-list rows.

Official files (``train.csv``, ``validate.csv``, ``test.csv``)::

    label,youtube_id,time_start,time_end,split
    abseiling,--33Lscn6sk,4,14,train

``label`` is absent from some test files (those rows are unlabelled). Videos are the 10-second clips as
the usual download scripts write them, ``<youtube_id>_<start:06d>_<end:06d>.mp4``, anywhere below the
video root (flat, or in split/label folders). Where only the whole YouTube video ``<youtube_id>.<ext>``
is there, the row trims it to ``[time_start, time_end]`` instead.

Rows: id ``<youtube_id>_<start:06d>_<end:06d>``; label the ``label`` text; split from the ``split``
column, else from the file name (train / validate / test), else the ``split`` option.
"""

from __future__ import annotations

from pathlib import Path

from stages.core.errors import SourceError
from stages.video.adapters.base import ADAPTERS, Listing, row
from stages.video.adapters.common import VideoIndex, normalise_split, read_csv, split_from_name


def _seconds(text: str, name: str, where: str) -> int:
    try:
        value = float(text)
        if value != int(value) or value < 0:
            raise ValueError
    except ValueError:
        raise SourceError(f"{where}: {name}={text!r}; expected whole seconds >= 0 (Kinetics CSV)") from None
    return int(value)


@ADAPTERS.register("kinetics")
def kinetics(annotations: list[Path], videos: Path, *, split: str = "") -> Listing:
    """Kinetics CSVs (label, youtube_id, time_start, time_end, split) -> one row per clip."""
    index, rows = VideoIndex(videos), []
    for path in annotations:
        file_split = normalise_split(split, f"option split of {path}") or split_from_name(path.name)
        for where, rec in read_csv(path, ("youtube_id", "time_start", "time_end")):
            start = _seconds(rec["time_start"], "time_start", where)
            end = _seconds(rec["time_end"], "time_end", where)
            yt = rec["youtube_id"]
            clip = f"{yt}_{start:06d}_{end:06d}"
            row_split = normalise_split(rec.get("split"), where) or file_split
            trimmed = index.lookup(clip)
            whole = None if trimmed else index.lookup(yt)
            label = rec.get("label") or None
            if whole:  # the untrimmed YouTube video: trim it here
                rows.append(row(where, whole, clip, label, row_split, float(start), float(end)))
            else:
                rows.append(row(where, trimmed or str(videos / f"{clip}.mp4"), clip, label, row_split))
    return Listing(rows)
