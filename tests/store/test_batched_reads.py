"""A batch of clips is one read per part and array, and returns exactly what per-clip reads return:
every dtype (float16, int8 dequantised), ragged views, several parts, repeated rows, a preallocated out."""

from __future__ import annotations

import numpy as np
import pytest

from stages.core.errors import StoreError
from store import FeatureStore
from tests.store.conftest import fill
from tests.store.synthetic import TENSORS


@pytest.fixture(scope="module")
def two_parts(tmp_path_factory):
    from store import create_store
    from tests.store.synthetic import frozen_weights, make_spec

    path = tmp_path_factory.mktemp("batched") / "s.zarr"
    create_store(path, make_spec(shard_mb=0.002), frozen=frozen_weights())
    fill(path, 0, 6, part="p0000-of-0002", max_rows=20)
    fill(path, 6, 6, part="p0001-of-0002", max_rows=20)
    return path


def random_clips(fs: FeatureStore, count: int, frames: int, seed: int) -> list[tuple[str, int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    clips = []
    while len(clips) < count:
        rec = fs.videos[int(rng.integers(len(fs.videos)))]
        view = int(rng.choice(sorted(rec.views)))
        n = rec.rows(view)
        clips.append((rec.id, view, np.sort(rng.integers(0, n, frames))))  # repeats when n < frames
    return clips


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_batched_reads_equal_per_clip_reads(two_parts, dtype):
    fs = FeatureStore(two_parts)
    names = [t.name for t in TENSORS]
    clips = random_clips(fs, 24, 5, seed=1)
    assert len({fs.video(v).part for v, _, _ in clips}) == 2  # the batch spans both parts
    batch = fs.read_clips(clips, tensors=names, dtype=dtype)
    for b, (vid, view, idx) in enumerate(clips):
        one = fs.read(vid, view, idx, names, dtype=dtype)
        for name in names:
            assert batch[name].dtype == dtype
            np.testing.assert_array_equal(batch[name][b], one[name], err_msg=f"{name} clip {b}")


def test_one_store_call_per_part_and_array(two_parts, monkeypatch):
    fs = FeatureStore(two_parts)
    calls: list[tuple[str, str]] = []
    rows = fs._rows
    monkeypatch.setattr(fs, "_rows", lambda part, name, r: calls.append((part, name)) or rows(part, name, r))
    fs.read_clips(random_clips(fs, 32, 4, seed=2), tensors=["b2.tokens", "b3.q"])
    assert sorted(calls) == sorted(
        (part, name) for part in fs.parts() for name in ("b2.tokens", "b3.q", "b3.q.scale")
    )


def test_reads_into_a_preallocated_buffer(two_parts):
    fs = FeatureStore(two_parts)
    clips = random_clips(fs, 8, 3, seed=3)
    out = {"b3.tokens": np.full((8, 3, 5, 16), 7.0, np.float32)}
    got = fs.read_clips(clips, tensors=["b3.tokens"], out=out)
    assert got["b3.tokens"] is out["b3.tokens"]
    np.testing.assert_array_equal(out["b3.tokens"], fs.read_clips(clips, tensors=["b3.tokens"])["b3.tokens"])
    with pytest.raises(StoreError, match=r"expected a C-contiguous \(8, 3, 5, 16\) array"):
        fs.read_clips(clips, tensors=["b3.tokens"], out={"b3.tokens": np.zeros((8, 3, 16, 5), np.float32)})


def test_a_local_store_is_read_directly_and_equals_what_zarr_reads(two_parts):
    local, remote = FeatureStore(two_parts), FeatureStore(f"file://{two_parts}")  # a URL: read through zarr
    names = [t.name for t in TENSORS]
    clips = random_clips(local, 32, 6, seed=5)
    direct, via_zarr = local.read_clips(clips, tensors=names), remote.read_clips(clips, tensors=names)
    rec = local.videos[3]
    for name in names:
        np.testing.assert_array_equal(direct[name], via_zarr[name], err_msg=name)
        np.testing.assert_array_equal(
            local.read(rec.id, tensors=[name])[name], remote.read(rec.id, tensors=[name])[name]
        )
    part = local.videos[0].part
    assert local._shard_reader(part, names[0]) is not None and remote._shard_reader(part, names[0]) is None
