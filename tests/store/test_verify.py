"""verify: damaged shard bytes, truncated shards, rewritten rows and NaN/Inf are caught, naming the video."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from stages.core.errors import StoreCorruptError
from store import FeatureStore, PartWriter, VideoEntry, verify
from tests.store.synthetic import make_video, video_id

COUNT, MAX_ROWS = 6, 20  # as in the `pristine` fixture


@pytest.fixture
def store(store_copy) -> Path:
    return store_copy  # small shards: one 8-row inner chunk per shard file of b2.tokens


def largest_tokens_shard(store: Path) -> tuple[Path, int, int]:
    """The largest shard file of any ``b*.tokens`` array, and the rows [lo, hi) it holds."""
    files = [p for p in store.glob("parts/*/b*.tokens/c/**/*") if p.is_file()]
    shard = max(files, key=lambda p: p.stat().st_size)
    array_dir = next(p for p in shard.parents if p.name == "c").parent
    rows = zarr.open_array(str(array_dir), mode="r").shards[0]
    index = int(shard.relative_to(array_dir / "c").parts[0])
    return shard, index * rows, (index + 1) * rows


def videos_in_rows(store: Path, lo: int, hi: int) -> set[str]:
    return {
        v.id
        for v in FeatureStore(store).videos
        if any(start < hi and lo < start + n for start, n in v.views.values())
    }


def assert_damage_reported(store: Path, lo: int, hi: int) -> None:
    hit = videos_in_rows(store, lo, hi)
    problems = verify(store)
    assert hit and {p["id"] for p in problems} == hit, (problems, hit)
    fs = FeatureStore(store)
    for vid in hit:
        with pytest.raises(StoreCorruptError, match=r"twostage verify"):
            for view in fs.video(vid).views:
                fs.read(vid, view)
    for vid in {v.id for v in fs.videos} - hit:  # the rest reads fine
        for view in fs.video(vid).views:
            fs.read(vid, view)


def test_clean_store_verifies_empty(store):
    class Count:
        n = 0

        def update(self, k: int) -> None:
            self.n += k

    progress = Count()
    assert verify(store, progress=progress) == []
    assert progress.n == COUNT


def test_flipped_byte_in_a_shard_names_the_video(store):
    shard, lo, hi = largest_tokens_shard(store)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    assert_damage_reported(store, lo, hi)


def test_truncated_shard_names_the_video(store):
    shard, lo, hi = largest_tokens_shard(store)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert_damage_reported(store, lo, hi)


def test_rows_rewritten_after_commit_fail_the_checksum(store):
    fs = FeatureStore(store)
    rec = fs.video(video_id(2))
    start, n = rec.views[0]
    array = zarr.open_array(str(store / "parts/p0000/final.cls"), mode="r+")
    array[start] = np.asarray(array[start]) + np.float16(1)  # valid bytes, other values
    problems = verify(store)
    assert [p["id"] for p in problems] == [video_id(2)]
    assert "checksum mismatch" in problems[0]["problem"]


@pytest.mark.parametrize(
    ("tensor", "value", "where"),
    [
        ("b2.tokens", np.nan, "view 0: b2.tokens holds"),
        ("final.cls", 1e6, "view 0: final.cls holds"),  # overflows float16: inf
        ("b3.q", np.inf, "view 0: b3.q.scale holds"),  # int8: the scale carries the inf
    ],
)
def test_nan_and_inf_written_through_a_writer_are_reported(store, tensor, value, where):
    entry, views = make_video(3, 99, max_rows=MAX_ROWS)
    views[0].tensors[tensor][0, ...] = value
    bad = VideoEntry("bad", entry.label, entry.source, entry.fps, entry.num_frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns about casting the non-finite value
        with PartWriter(store, "p0000") as w:
            w.add(bad, views)
    problems = verify(store)
    assert [p["id"] for p in problems] == ["bad"]
    assert "NaN/Inf" in problems[0]["problem"] and where in problems[0]["problem"]


def test_default_store_without_chunk_crc_still_catches_a_flipped_byte(new_store):
    from tests.store.conftest import fill

    path = new_store(chunk_crc=False, compression="none")
    fill(path, 0, 4, commit_interval_s=0.0)
    shard, lo, hi = largest_tokens_shard(path)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    hit = videos_in_rows(path, lo, hi)
    assert hit and {p["id"] for p in verify(path)} == hit  # the per-video checksum names the damage
