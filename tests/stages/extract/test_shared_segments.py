"""Segments of one file share its decoding: one task per file, the file opened once for all its segments,
the same rows as extracting each segment alone, and one part for all of them under ``--part I/N``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from stages.core.config import load_config
from stages.extract import worker
from stages.extract.config import ExtractConfig
from stages.extract.runner import decode_tasks
from stages.extract.stage import decode_job, run_extract, split_parts
from stages.models import build_backbone
from stages.video import decode
from stages.video.sources import VideoItem, read_source
from store import FeatureStore


def _item(i: str, group: str | None = None) -> VideoItem:
    return VideoItem(i, f"/v/{group or i}.mp4", None, None, None, {"group": group} if group else {})


def test_tasks_group_the_segments_of_a_file_and_keep_the_order() -> None:
    items = [_item("a"), _item("f__0-1", "f"), _item("b"), _item("f__1-2", "f"), _item("g__0-1", "g")]
    assert decode_tasks(items, [0, 1, 2, 3, 4]) == [0, [1, 3], 2, 4]  # a one-segment group is a plain task
    assert decode_tasks(items, [2, 3]) == [2, 3]


def test_parts_keep_the_segments_of_a_file_together_and_plain_lists_split_as_before() -> None:
    items = [_item(f"f__{k}", "f") for k in range(5)] + [_item(f"v{k}") for k in range(7)]
    parts = split_parts(items, 3)
    assert sorted(n for p in parts for n in p) == list(range(12))
    owner = {n: i for i, p in enumerate(parts) for n in p}
    assert len({owner[n] for n in range(5)}) == 1
    plain = [_item(f"v{k:02d}") for k in range(10)]
    order = sorted(range(10), key=lambda i: plain[i].id)
    assert split_parts(plain, 3) == [[n for k, n in enumerate(order) if k % 3 == i] for i in range(3)]


@pytest.fixture
def segment_list(direction_videos: Path, tmp_path: Path) -> Path:
    video = direction_videos / "videos" / "000000.mp4"
    path = tmp_path / "segments.csv"
    path.write_text(f"path,label,start,end\n{video},up,0,1.5\n{video},down,1,3\n{video},up,2,\n")
    return path


def _cfg(source: Path, store: Path, *extra: str) -> ExtractConfig:
    return load_config(ExtractConfig, None, [
        f"source={source}", f"store.path={store}", "backbone.name=test_timm_vit", "tensors=[final.cls]",
        "sampling.mode=dense", "run.progress=false", "run.decode_workers=1", *extra,
    ])  # fmt: skip


def test_the_file_is_opened_once_for_all_its_segments(
    segment_list: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = _cfg(segment_list, tmp_path / "s.zarr")
    items, _ = read_source(str(segment_list))
    job = decode_job(cfg, build_backbone("test_timm_vit"))
    opened, real = [], decode.open_video
    monkeypatch.setattr(decode, "open_video", lambda *a, **k: opened.append(a) or real(*a, **k))
    sent: list[tuple] = []
    slot, started = SimpleNamespace(value=-1), SimpleNamespace(value=0.0)
    worker.run_task(job, items, [0, 1, 2], sent.append, slot, started)
    assert len(opened) == 1
    assert [m[1] for m in sent if m[0] == "done"] == [0, 1, 2]
    rows = {n: sum(len(m[4]) for m in sent if m[0] == "frames" and m[1] == n) for n in range(3)}
    assert rows[0] == 12 and rows[1] == 16  # 8 fps: [0, 1.5) and [1, 3) seconds
    # A file that cannot be opened fails each of its segments, by name, and nothing else.
    nope = str(tmp_path / "nope.mp4")
    missing = [VideoItem(f"m{k}", nope, None, k, k + 1, {"group": nope}) for k in range(2)]
    sent.clear()
    worker.run_task(job, missing, [0, 1], sent.append, slot, started)
    assert [(m[0], m[1], m[2]) for m in sent] == [("fail", 0, "open"), ("fail", 1, "open")]


def test_shared_decoding_stores_what_one_segment_at_a_time_stores(segment_list: Path, tmp_path: Path) -> None:
    run_extract(_cfg(segment_list, tmp_path / "shared.zarr"))
    shared = FeatureStore(tmp_path / "shared.zarr")
    items, _ = read_source(str(segment_list))
    for k, item in enumerate(items):  # each segment alone, as its own list (no group)
        alone = tmp_path / f"alone{k}.csv"
        end = "" if item.end is None else item.end
        alone.write_text(f"path,label,start,end,id\n{item.path},{item.label},{item.start},{end},{item.id}\n")
        run_extract(_cfg(alone, tmp_path / f"alone{k}.zarr"))
        one = FeatureStore(tmp_path / f"alone{k}.zarr")
        a, b = shared.read(item.id, tensors=["final.cls"]), one.read(item.id, tensors=["final.cls"])
        a, b = a["final.cls"], b["final.cls"]
        assert a.shape == b.shape and np.array_equal(a, b)
