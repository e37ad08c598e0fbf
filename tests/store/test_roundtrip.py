"""Round trip: what a writer adds is what a reader returns (ragged videos, every tensor kind, any slice)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from stages.core.errors import StoreError
from store import FeatureStore, PartWriter, VideoEntry, ViewRows, verify
from store.codecs import dequantise_int8, quantise_int8
from tests.store.conftest import N_VIDEOS
from tests.store.synthetic import (
    FROZEN_NAMES,
    SMALL_SHARD_MB,
    TENSORS,
    frozen_weights,
    make_video,
    video_id,
)

SMALL_ONLY = pytest.mark.parametrize("filled_store", [SMALL_SHARD_MB], ids=["small-shards"], indirect=True)
FP16 = [t.name for t in TENSORS if not t.quantised]
INT8 = [t.name for t in TENSORS if t.quantised]


def views_of(written: dict, vid: str) -> dict[int, ViewRows]:
    return {v.view: v for v in written[vid][1]}


def test_every_video_committed_and_store_verifies(filled_store):
    path, written = filled_store
    fs = FeatureStore(path)
    assert [v.id for v in fs.videos] == sorted(written) == [video_id(i) for i in range(N_VIDEOS)]
    assert verify(path) == []


def test_float16_tensors_are_exactly_the_float16_cast(filled_store):
    path, written = filled_store
    fs = FeatureStore(path)
    for vid in written:
        for view, rows in views_of(written, vid).items():
            raw = fs.read(vid, view, tensors=FP16, dequantise=False)
            as_f32 = fs.read(vid, view, tensors=FP16)
            for name in FP16:
                want = np.asarray(rows.tensors[name]).astype(np.float16)
                assert raw[name].dtype == np.float16 and as_f32[name].dtype == np.float32
                np.testing.assert_array_equal(raw[name], want, err_msg=f"{vid}/{view}/{name}")
                np.testing.assert_array_equal(as_f32[name], want.astype(np.float32))


@SMALL_ONLY  # reading does not depend on the shard size; writing is checked on both
def test_int8_tensors_within_the_stated_bound(filled_store):
    path, written = filled_store
    fs = FeatureStore(path)
    for vid in written:
        rec = fs.video(vid)
        for view, rows in views_of(written, vid).items():
            start, n = rec.views[view]
            out = fs.read(vid, view, tensors=INT8)
            for name in INT8:
                x = np.asarray(rows.tensors[name]).astype(np.float32)  # the writer quantises float32
                scale = fs.read_raw(rec.part, name + ".scale", start, start + n).astype(np.float64)
                absmax = np.abs(x).max(axis=-1).astype(np.float64)
                err = np.abs(x.astype(np.float64) - out[name])
                slack = 1e-6 * absmax[..., None]  # float32 rounding of q * scale, nothing more
                assert out[name].shape == x.shape
                assert (err <= scale[..., None] / 2 + slack).all(), f"{vid}/{view}/{name}"
                assert (err <= absmax[..., None] / 254 * (1 + 2**-10) + slack + 2**-25).all()
                assert (scale >= absmax / 127).all()  # rounded up: nothing clips


@SMALL_ONLY  # reading does not depend on the shard size; writing is checked on both
def test_all_zero_frame_round_trips_exactly(filled_store):
    path, written = filled_store
    fs = FeatureStore(path)
    zero_views = [(vid, v) for vid in written for v in written[vid][1] if len(v.time_s) > 2]
    assert zero_views
    for vid, v in zero_views:
        first = TENSORS[0].name  # the all-zero frame is row 1 of the first tensor
        np.testing.assert_array_equal(fs.read(vid, v.view, rows=[1], tensors=[first])[first], 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantising_a_torch_tensor_matches_numpy(dtype):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(6, 5, 16)).astype(np.float32) * np.exp(rng.normal(size=16)))
    x[0, 0] = 0.0
    x[1, 2] *= 1000.0
    x = x.to(dtype)
    q_t, s_t = quantise_int8(x)
    q_n, s_n = quantise_int8(x.float().numpy())
    assert q_t.dtype == torch.int8 and s_t.dtype == torch.float16
    assert q_n.dtype == np.int8 and s_n.dtype == np.float16 and s_n.shape == (6, 5)
    np.testing.assert_array_equal(q_t.numpy(), q_n)
    np.testing.assert_array_equal(s_t.numpy(), s_n)
    err = np.abs(x.float().numpy() - dequantise_int8(q_n, s_n))
    assert (err <= s_n.astype(np.float32)[..., None] / 2 * (1 + 1e-6)).all()


def test_torch_and_prequantised_inputs_store_like_numpy(new_store):
    path = new_store()
    entry, views = make_video(5, 0)
    as_torch = [
        ViewRows(
            v.view,
            {name: torch.from_numpy(np.asarray(x)) for name, x in v.tensors.items()},
            v.time_s,
            v.frame_index,
            v.padded,
            v.meta,
        )
        for v in views
    ]
    for v in as_torch:
        v.tensors["b2.tokens"] = v.tensors["b2.tokens"].to(torch.bfloat16)
        v.tensors["b3.q"] = quantise_int8(v.tensors["b3.q"].float())  # quantised "on the device"
    with PartWriter(path, "p0000") as w:
        w.add(entry, views)
        w.add(VideoEntry("torch", entry.label, entry.source, entry.fps, entry.num_frames), as_torch)
    fs = FeatureStore(path)
    for v, t in zip(views, as_torch, strict=True):
        a, b = fs.read(entry.id, v.view, dequantise=False), fs.read("torch", v.view, dequantise=False)
        np.testing.assert_array_equal(
            b["b2.tokens"], t.tensors["b2.tokens"].float().numpy().astype(np.float16)
        )
        for name in ("b2.pooled", "b3.q", "b3.tokens", "final.cls"):
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert verify(path) == []


ROW_SELECTIONS = [
    slice(0, None, 2),
    slice(1, 40, 3),
    slice(3, 9),
    slice(None, None, -1),
    [5, 1, 1, 3],
    [0],
    [-1, 0],
    np.array([2, 4, 6, 8]),
]


@SMALL_ONLY  # reading does not depend on the shard size; writing is checked on both
def test_clips_with_stride_and_index_lists(filled_store):
    path, written = filled_store
    fs = FeatureStore(path)
    checked = 0
    for vid in sorted(written)[:3]:  # a sample: every read is a few zarr calls
        for view, v in views_of(written, vid).items():
            n = len(v.time_s)
            whole = fs.read(vid, view)
            for rows in ROW_SELECTIONS:
                try:
                    idx = np.arange(n)[rows]
                except IndexError:  # an index list longer than this view
                    continue
                out = fs.read(vid, view, rows=rows)
                for name in FP16:
                    want = np.asarray(v.tensors[name]).astype(np.float16).astype(np.float32)[idx]
                    np.testing.assert_array_equal(out[name], want, err_msg=f"{vid}/{view}/{name}/{rows}")
                for name in INT8:
                    assert out[name].shape == (len(idx), *fs.tensors[name].shape)
                    np.testing.assert_array_equal(out[name], whole[name][idx])
                checked += 1
    assert checked >= 10


@SMALL_ONLY  # reading does not depend on the shard size; writing is checked on both
def test_read_clips_batches_to_B_T(filled_store):
    path, written = filled_store
    fs = FeatureStore(path)
    T, stride = 4, 2
    clips = [
        (vid, v.view, list(range(1, 1 + T * stride, stride)))
        for vid in written
        for v in written[vid][1]
        if len(v.time_s) >= 1 + T * stride
    ]
    assert len(clips) >= 4
    batch = fs.read_clips(clips, tensors=["b2.tokens", "b3.q", "final.cls"])
    for name in ("b2.tokens", "b3.q", "final.cls"):
        assert batch[name].shape == (len(clips), T, *fs.tensors[name].shape)
        for b, (vid, view, idx) in enumerate(clips):
            np.testing.assert_array_equal(batch[name][b], fs.read(vid, view, rows=idx, tensors=[name])[name])
    with pytest.raises(StoreError, match="equal lengths"):
        fs.read_clips([clips[0], (clips[1][0], clips[1][1], clips[1][2][:2])])


@SMALL_ONLY  # reading does not depend on the shard size; writing is checked on both
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_iter_chunks_covers_every_row_in_order(filled_store, chunk):
    path, written = filled_store
    fs = FeatureStore(path)
    for vid in sorted(written)[-2:]:  # a sample: every chunk is a few zarr calls
        for view, v in views_of(written, vid).items():
            n = len(v.time_s)
            chunks = list(fs.iter_chunks(vid, chunk, view=view, tensors=["b2.tokens", "b3.tokens"]))
            assert [len(c["b2.tokens"]) for c in chunks] == [min(chunk, n - s) for s in range(0, n, chunk)]
            whole = fs.read(vid, view, tensors=["b2.tokens", "b3.tokens"])
            for name in whole:
                np.testing.assert_array_equal(np.concatenate([c[name] for c in chunks]), whole[name])
            kept = list(fs.iter_chunks(vid, chunk, view=view, tensors=["final.cls"], drop_last=True))
            assert len(kept) == n // chunk and all(len(c["final.cls"]) == chunk for c in kept)


def test_row_meta_and_records_round_trip(filled_store):
    path, written = filled_store
    fs = FeatureStore(path)
    for vid, (entry, views) in written.items():
        rec = fs.video(vid)
        assert (rec.label, rec.source, rec.fps, rec.num_frames, rec.meta) == (
            entry.label,
            entry.source,
            entry.fps,
            entry.num_frames,
            entry.meta,
        )
        assert sorted(rec.views) == [v.view for v in views]
        for v in views:
            assert rec.rows(v.view) == len(v.time_s)
            assert rec.view_meta[v.view] == v.meta
            meta = fs.row_meta(vid, v.view)
            assert meta["time_s"].dtype == np.float64 and meta["padded"].dtype == bool
            np.testing.assert_array_equal(meta["time_s"], v.time_s)
            np.testing.assert_array_equal(meta["frame_index"], v.frame_index)
            np.testing.assert_array_equal(meta["padded"], v.padded)
    assert fs.classes == ("left", "right", "up") and fs.backbone["name"] == "tiny-vit"
    assert list(fs.tensors) == [t.name for t in TENSORS] and fs.tensors["b3.q"].quantised


@SMALL_ONLY  # reading does not depend on the shard size; writing is checked on both
def test_frozen_weights_round_trip(filled_store):
    fs = FeatureStore(filled_store[0])
    got, want = fs.frozen_weights(), frozen_weights()
    assert sorted(got) == sorted(FROZEN_NAMES)
    for name in FROZEN_NAMES:
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], want[name])


def test_shard_size_sets_the_layout(filled_store, request):
    path, written = filled_store
    longest = max(len(v.time_s) for _, views in written.values() for v in views)
    total = sum(len(v.time_s) for _, views in written.values() for v in views)
    tokens = zarr.open_array(str(path / "parts/p0000/b2.tokens"), mode="r")
    files = [p for p in (path / "parts/p0000/b2.tokens/c").rglob("*") if p.is_file()]
    assert tokens.shape[0] == total
    if "small" in request.node.callspec.id:
        assert tokens.shards[0] < longest  # videos straddle shards
        assert len(files) == -(-total // tokens.shards[0])
    else:
        assert tokens.shards[0] > total and len(files) == 1  # many videos share one shard


def test_reopened_writer_continues_after_the_last_row(filled_store):
    path, written = filled_store
    fs = FeatureStore(path)
    spans = sorted((start, n) for rec in fs.videos for start, n in rec.views.values())
    ends = [0] + [s + n for s, n in spans]
    assert [s for s, _ in spans] == ends[:-1]  # contiguous, no gap, no overlap
    first_session = {video_id(i) for i in range(N_VIDEOS // 2)}
    last_of_first = max(s + n for rec in fs.videos if rec.id in first_session for s, n in rec.views.values())
    first_of_second = min(
        s for rec in fs.videos if rec.id not in first_session for s, _ in rec.views.values()
    )
    assert first_of_second == last_of_first


def test_reader_sees_only_committed_videos_until_refresh(new_store):
    path = new_store()
    with PartWriter(path, "p0000", commit_interval_s=3600.0) as w:  # no partial flush: rows stay buffered
        w.add(*make_video(0, 0))
        assert len(FeatureStore(path)) == 0
        w.flush()
        fs = FeatureStore(path)
        assert [v.id for v in fs.videos] == [video_id(0)]
        w.add(*make_video(0, 1))
        w.flush()
        assert len(fs) == 1
        fs.refresh()
        assert [v.id for v in fs.videos] == [video_id(0), video_id(1)]


def test_views_given_out_of_order_still_verify(new_store):
    path = new_store()
    entry, views = make_video(2, 3)
    while len(views) < 2:
        entry, views = make_video(2, int(entry.id[-3:]) + 1)
    with PartWriter(path, "p0000") as w:
        w.add(entry, views[::-1])
    assert verify(path) == []
    fs = FeatureStore(path)
    for v in views:
        np.testing.assert_array_equal(
            fs.read(entry.id, v.view, tensors=["final.cls"], dequantise=False)["final.cls"],
            np.asarray(v.tensors["final.cls"]).astype(np.float16),
        )
