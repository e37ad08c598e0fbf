"""Something-Something v2 JSON annotations -> source-list rows.

Official files::

    something-something-v2-labels.json      {"Approaching something with your camera": "0", ...}
    something-something-v2-train.json       [{"id": "78687", "label": "holding potato next to vicks",
                                              "template": "Holding [something] next to [something]",
                                              "placeholders": ["potato", "vicks"]}, ...]
    something-something-v2-validation.json  (same fields)
    something-something-v2-test.json        [{"id": "1420"}, ...]   (unlabelled)

Videos: ``<video root>/<id>.webm``. Rows: id the video id; label the template with its brackets removed
(``Holding something next to something``), which is how the labels JSON names the 174 classes (their
order is the JSON's indices); split from the file name (train / validation / test), else the ``split``
option. The filled-in caption and the placeholders go to ``meta``. Which file is which is told by its
content: an object is the labels file, a list a split file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.core.errors import SourceError
from stages.video.adapters.base import ADAPTERS, Listing, row
from stages.video.adapters.common import VideoIndex, normalise_split, split_from_name


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path} is not valid JSON ({e}); expected a Something-Something v2 file") from e


def _classes(labels: dict[str, Any], path: Path) -> list[str]:
    try:
        order = sorted(labels, key=lambda name: int(labels[name]))
    except (TypeError, ValueError):
        raise SourceError(
            f"{path}: values must be class indices ({{'Approaching something ...': '0'}})"
        ) from None
    return order


@ADAPTERS.register("ssv2")
def ssv2(annotations: list[Path], videos: Path, *, split: str = "") -> Listing:
    """Something-Something v2 (labels JSON + train/validation/test JSON) -> one row per video."""
    documents = [(p, _load(p)) for p in annotations]
    classes = None
    for path, doc in documents:
        if isinstance(doc, dict):
            classes = _classes(doc, path)
    index, rows = VideoIndex(videos), []
    for path, doc in documents:
        if isinstance(doc, dict):
            continue
        if not isinstance(doc, list):
            raise SourceError(
                f"{path}: a {type(doc).__name__}; expected a list of videos or the labels object"
            )
        file_split = normalise_split(split, f"option split of {path}") or split_from_name(path.name)
        for n, rec in enumerate(doc):
            where = f"{path}[{n}]"
            if not isinstance(rec, dict) or not str(rec.get("id", "")).strip():
                raise SourceError(
                    f"{where}: {rec!r} has no 'id'; expected {{'id': '78687', 'template': ...}}"
                )
            vid = str(rec["id"]).strip()
            template = rec.get("template")
            label = template.replace("[", "").replace("]", "") if isinstance(template, str) else None
            path_ = index.find(vid, f"{vid}.webm")
            rows.append(
                row(
                    where,
                    path_,
                    vid,
                    label,
                    file_split,
                    caption=rec.get("label"),
                    placeholders=rec.get("placeholders"),
                )
            )
    return Listing(rows, classes)
