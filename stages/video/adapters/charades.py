"""Charades CSVs (multi-label, with action intervals) -> one source-list row per video.

Official files::

    Charades_v1_train.csv / Charades_v1_test.csv
        id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length
        46GP8,HR43,Kitchen,6,7,Yes,...,...,...,c092 11.90 21.20;c147 0.00 12.60,24.83
    Charades_v1_classes.txt   c000 Holding some clothes   (optional: fixes the 157-class order)

Videos: ``<video root>/<id>.mp4`` (``Charades_v1_480/``). Rows: id the video id; split from the file name
(train / test), else the ``split`` option. Charades is multi-label: ``meta`` holds ``multilabel`` (the
class codes present, sorted), the same as ``targets: {"labels": [...]}`` (stage two's multi-label
``data.targets: [labels]``: sigmoid loss, mAP), and ``actions`` (``[code, start_s, end_s]`` each).
The single ``label`` is the class with the **longest total annotated time** in the video (ties: the
lowest code); a video without actions is unlabelled. Class names are the codes (``c092``);
``Charades_v1_classes.txt`` maps them to text.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from stages.core.errors import SourceError
from stages.video.adapters.base import ADAPTERS, Listing, row
from stages.video.adapters.common import VideoIndex, normalise_split, read_csv, split_from_name


def _actions(text: str, where: str) -> list[list[Any]]:
    """``"c092 11.90 21.20;c147 0.00 12.60"`` -> ``[["c092", 11.9, 21.2], ["c147", 0.0, 12.6]]``."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        cells = part.split()
        try:
            if len(cells) != 3 or not cells[0].startswith("c"):
                raise ValueError
            out.append([cells[0], float(cells[1]), float(cells[2])])
        except ValueError:
            raise SourceError(
                f"{where}: action {part!r}; expected '<class code> <start s> <end s>' like 'c092 11.90 21.20'"
            ) from None
    return out


def _main_class(actions: list[list[Any]]) -> str | None:
    total: dict[str, float] = defaultdict(float)
    for code, start, end in actions:
        total[code] += max(0.0, end - start)
    return min(total, key=lambda c: (-total[c], c)) if total else None


def _codes(path: Path) -> list[str]:
    codes = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            code = line.split()[0]
            if not code.startswith("c"):
                raise SourceError(
                    f"{path}:{n}: {line!r}; expected '<class code> <name>' like 'c000 Holding ...'"
                )
            codes.append(code)
    return codes


@ADAPTERS.register("charades")
def charades(annotations: list[Path], videos: Path, *, split: str = "") -> Listing:
    """Charades (train/test CSVs with ``actions``, optional classes txt) -> one multi-label row per video."""
    classes = None
    index, rows = VideoIndex(videos), []
    for path in annotations:
        if path.suffix.lower() == ".txt":
            classes = _codes(path)
            continue
        file_split = normalise_split(split, f"option split of {path}") or split_from_name(path.name)
        for where, rec in read_csv(path, ("id", "actions")):
            actions = _actions(rec["actions"], where)
            vid = rec["id"]
            rows.append(
                row(
                    where,
                    index.find(vid, f"{vid}.mp4"),
                    vid,
                    _main_class(actions),
                    file_split,
                    multilabel=sorted({a[0] for a in actions}),
                    targets={"labels": sorted({a[0] for a in actions})},  # data.targets: [labels]
                    actions=actions,
                    scene=rec.get("scene") or None,
                )
            )
    return Listing(rows, classes)
