"""EPIC-Kitchens-100 action CSVs -> one source-list row per action segment of the long videos.

Official files::

    EPIC_100_train.csv / EPIC_100_validation.csv
        narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,
        start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes
        P01_01_0,P01,P01_01,00:00:00.64,00:00:00.14,00:00:03.37,8,202,open door,open,3,door,3,['door'],[3]
    EPIC_100_test_timestamps.csv   narration_id,participant_id,video_id,start_timestamp,stop_timestamp,...
    EPIC_100_verb_classes.csv / EPIC_100_noun_classes.csv   id,key,instances,category  (optional)

Videos: ``<video root>/<participant>/videos/<video_id>.MP4``. Rows: id the ``narration_id``; start / end
from the timestamps (``HH:MM:SS.ff``); split from the file name (train / validation / test), else the
``split`` option. Every segment of a video names the same file, so they share its decoding.

Labels: the single ``label`` is the **verb** class by default (97 classes; the option ``label=noun`` or
``label=action`` (``verb:noun``) picks another). Classes are named by the ``key`` column of the class
CSVs when they are given (pass them: then the class list is the official one, whatever rows a file
holds), else by their index (``"3"``). Both labels go to ``meta``: ``labels: {"verb", "noun"}``
(names), ``label_index: {"verb", "noun"}`` (class indices), with the ``narration``; and as
``targets: {"verb", "noun"}``, so stage two trains both at once with ``data.targets: [verb, noun]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.core.errors import SourceError
from stages.video.adapters.base import ADAPTERS, Listing, row
from stages.video.adapters.common import (
    VideoIndex,
    normalise_split,
    read_csv,
    split_from_name,
    timestamp_seconds,
)

_SEGMENT_COLUMNS = ("narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp")
_LABELS = ("verb", "noun", "action")


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        return [c.strip() for c in f.readline().split(",")]


def _class_names(path: Path) -> dict[int, str]:
    names = {}
    for where, rec in read_csv(path, ("id", "key")):
        try:
            names[int(rec["id"])] = rec["key"]
        except ValueError:
            raise SourceError(f"{where}: id={rec['id']!r}; expected a class index") from None
    return names


def _label(
    rec: dict[str, str], kind: str, names: dict[int, str] | None, where: str
) -> tuple[str, int] | None:
    text = rec.get(f"{kind}_class", "")
    if not text:
        return None  # the test file has no labels
    try:
        index = int(text)
    except ValueError:
        raise SourceError(f"{where}: {kind}_class={text!r}; expected a class index") from None
    if names is not None and index not in names:
        raise SourceError(
            f"{where}: {kind}_class={index} is not in the {kind} classes CSV ({len(names)} classes)"
        )
    return (names[index] if names is not None else str(index)), index


@ADAPTERS.register("epic100")
def epic100(annotations: list[Path], videos: Path, *, label: str = "verb", split: str = "") -> Listing:
    """EPIC-Kitchens-100 (train/validation/test CSVs, optional verb/noun class CSVs) -> one row per action."""
    if label not in _LABELS:
        raise SourceError(f"format 'epic100': label={label!r}; expected one of {', '.join(_LABELS)}")
    names: dict[str, dict[int, str] | None] = {"verb": None, "noun": None}
    segment_files = []
    for path in annotations:
        header = _header(path)
        if "narration_id" in header:
            segment_files.append(path)
        elif "key" in header and ("verb" in path.name.lower() or "noun" in path.name.lower()):
            names["verb" if "verb" in path.name.lower() else "noun"] = _class_names(path)
        else:
            raise SourceError(
                f"{path}: columns {header[:6]}; expected an EPIC-Kitchens-100 action CSV "
                "(narration_id, ...) or a verb/noun classes CSV (id, key, ...)"
            )
    index, rows = VideoIndex(videos), []
    for path in segment_files:
        file_split = normalise_split(split, f"option split of {path}") or split_from_name(path.name)
        for where, rec in read_csv(path, _SEGMENT_COLUMNS):
            rows.append(_segment(rec, where, file_split, index, names, label))
    names_ = names.get(label)  # the action classes are the (verb, noun) pairs the rows hold
    classes = [names_[i] for i in sorted(names_)] if names_ else None
    return Listing(rows, classes)


def _segment(
    rec: dict[str, str], where: str, split: str | None, index: VideoIndex, names: dict[str, Any], label: str
) -> dict[str, Any]:
    start = timestamp_seconds(rec["start_timestamp"], where)
    end = timestamp_seconds(rec["stop_timestamp"], where)
    video, person = rec["video_id"], rec["participant_id"]
    path = index.find(video, f"{person}/videos/{video}.MP4", f"{person}/videos/{video}.mp4")
    verb, noun = _label(rec, "verb", names["verb"], where), _label(rec, "noun", names["noun"], where)
    single = {
        "verb": verb and verb[0],
        "noun": noun and noun[0],
        "action": verb and noun and f"{verb[0]}:{noun[0]}",
    }[label]
    labels = {k: v[0] for k, v in (("verb", verb), ("noun", noun)) if v}
    index_ = {k: v[1] for k, v in (("verb", verb), ("noun", noun)) if v}
    return row(
        where,
        path,
        rec["narration_id"],
        single or None,
        split,
        start,
        end,
        labels=labels or None,
        label_index=index_ or None,
        targets=labels or None,  # stage two's data.targets: [verb, noun]
        narration=rec.get("narration") or None,
        participant=person,
    )
