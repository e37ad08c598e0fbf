"""Splits and segments in source lists (stages/video/sources.py): a ``split`` column, a ``meta`` column,
and rows that name one file several times (segments with their own ids, grouped by the file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.core.errors import InvalidIdError, SourceError
from stages.video.sources import read_source


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_segments_get_their_own_ids_and_share_a_group(tmp_path):
    src = write(
        tmp_path / "list.csv",
        "path,label,start,end,split,id\n"
        "long/P01_01.MP4,open,0.14,3.37,train,\n"
        "long/P01_01.MP4,take,4,6.5,Validation,\n"
        "long/P01_01.MP4,take,7.25,,TEST,\n"
        "long/P01_01.MP4,close,,2,,my_segment\n"
        "clips/a.mp4,open,1,2,train,\n",
    )
    items, classes = read_source(str(src))
    long = str(tmp_path / "long/P01_01.MP4")
    assert [(it.id, it.start, it.end) for it in items] == [
        ("long__P01_01__0.14-3.37", 0.14, 3.37),
        ("long__P01_01__4-6.5", 4.0, 6.5),
        ("long__P01_01__7.25-end", 7.25, None),
        ("my_segment", None, 2.0),  # an explicit id wins
        ("clips__a", 1.0, 2.0),  # a file named once keeps its plain id, even when trimmed
    ]
    assert [it.meta.get("group") for it in items] == [long] * 4 + [None]
    assert [it.meta.get("split") for it in items] == ["train", "val", "test", None, "train"]
    assert classes == ["close", "open", "take"]


def test_meta_column_is_kept_and_the_split_column_wins(tmp_path):
    rows = [
        {"path": "a.mp4", "label": "x", "split": "train", "meta": {"split": "test", "labels": {"v": "open"}}},
        {"path": "b.mp4", "label": "y", "meta": {"split": "validate", "multilabel": ["c1", "c2"]}},
    ]
    src = write(tmp_path / "list.jsonl", "\n".join(json.dumps(r) for r in rows))
    items, _ = read_source(str(src))
    assert items[0].meta == {"labels": {"v": "open"}, "split": "train"}
    assert items[1].meta == {"multilabel": ["c1", "c2"], "split": "val"}
    csv_src = write(tmp_path / "list.csv", 'path,meta\nc.mp4,"{""scene"": ""Kitchen""}"\nd.mp4,\n')
    items, _ = read_source(str(csv_src))
    assert [it.meta for it in items] == [{"scene": "Kitchen"}, {}]


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("path,start,end\nv.mp4,1,2\nv.mp4,1,2\n", SourceError, r"duplicate video id\(s\): \['v__1-2'\]"),
        ("path,id\nv.mp4,a\nw.mp4,a\n", SourceError, r"duplicate video id\(s\): \['a'\]"),
        ("path,split\nv.mp4,holdout\n", SourceError, r"list.csv:2: split='holdout' is not a known split"),
        ("path,meta\nv.mp4,[1]\n", SourceError, r"list.csv:2: meta=\[1\] is a list; expected a JSON object"),
        ("path,meta\nv.mp4,{oops\n", SourceError, r"list.csv:2: meta is not valid JSON"),
        (f"path,start,end\n{'x' * 196}.mp4,1,2\n{'x' * 196}.mp4,3,4\n", InvalidIdError, "has 201 characters"),
    ],
)
def test_bad_splits_segments_and_meta_are_refused(tmp_path, text, error, match):
    src = write(tmp_path / "list.csv", text)
    with pytest.raises(error, match=match):
        read_source(str(src))


def test_target_columns_become_the_videos_targets(tmp_path):
    csv_list = write(
        tmp_path / "list.csv",
        "path,label,label:verb,label:noun,labels\n"
        "a.mp4,open door,open,door,c1;c3\n"
        "b.mp4,take cup,take,,\n"
        "c.mp4,take cup,take,cup, c3 ;; c2 \n",
    )
    items, classes = read_source(str(csv_list))
    assert classes == ["open door", "take cup"]
    assert [it.meta["targets"] for it in items] == [
        {"verb": "open", "noun": "door", "labels": ["c1", "c3"]},
        {"verb": "take", "labels": []},  # an empty multi-label cell: no class present
        {"verb": "take", "noun": "cup", "labels": ["c2", "c3"]},
    ]
    jsonl = write(
        tmp_path / "list.jsonl",
        json.dumps(
            {"path": "a.mp4", "label:verb": "open", "labels": ["x", "y"], "meta": {"targets": {"n": 3}}},
            separators=(",", ":"),
        )
        + "\n",
    )
    (item,), classes = read_source(str(jsonl))
    assert item.label == "open" and classes == ["open"]  # no label column: the first label:<name> column
    assert item.meta["targets"] == {"n": "3", "verb": "open", "labels": ["x", "y"]}


@pytest.mark.parametrize(
    ("header", "row", "match"),
    [
        ("path,label:2nd", "a.mp4,x", r"target name '2nd'; expected letters"),
        ("path,meta", 'a.mp4,"{""targets"": {""verb"": [1, true]}}"', r"target verb=\[1, True\]; expected"),
        ("path,meta", 'a.mp4,"{""targets"": [""verb""]}"', r"targets=\['verb'\]; expected \{name"),
    ],
)
def test_bad_targets_are_refused_with_the_row(tmp_path, header, row, match):
    src = write(tmp_path / "list.csv", f"{header}\n{row}\n")
    with pytest.raises(SourceError, match=rf"list.csv:2: {match}"):
        read_source(str(src))
