"""Interop: a finalized store opens with plain zarr, dask and xarray, and agrees with FeatureStore."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from store import FeatureStore, PartWriter, finalize, inspect
from tests.store.conftest import fill
from tests.store.synthetic import TENSORS, video_id


@pytest.fixture(scope="module")
def finalized(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pristine`` plus a second part and a recorded failure, finalized."""
    import shutil

    path = Path(shutil.copytree(pristine, tmp_path_factory.mktemp("final") / "store.zarr"))
    fill(path, 6, 3, part="p0001", max_rows=20)
    with PartWriter(path, "p0001") as w:
        w.fail("broken_clip", "/videos/broken.mp4", "decode", "moov atom not found")
    summary = finalize(path, {"frames_per_s": 123.0})
    assert summary["videos"] == 9 and summary["failures"] == 1 and summary["frames_per_s"] == 123.0
    return path


def rows_of(fs: FeatureStore) -> list[tuple[str, str, int, int, int, int]]:
    return sorted(
        (v.id, v.part, view, v.label, start, n) for v in fs.videos for view, (start, n) in v.views.items()
    )


def test_plain_zarr_index_matches_the_reader(finalized):
    group = zarr.open_group(str(finalized), mode="r")
    assert group.attrs["twostage"]["complete"]["videos"] == 9
    index = {
        name: np.asarray(group[f"index/{name}"][:])
        for name in ("video_id", "part", "view", "label", "row_start", "n_rows", "fps")
    }
    assert len({len(col) for col in index.values()}) == 1
    plain = sorted(
        zip(
            index["video_id"].tolist(),
            index["part"].tolist(),
            index["view"].tolist(),
            index["label"].tolist(),
            index["row_start"].tolist(),
            index["n_rows"].tolist(),
            strict=True,
        )
    )
    fs = FeatureStore(finalized)
    assert plain == rows_of(fs) and len(plain) > 9
    assert fs.complete
    # a row range from the index reads the same through plain zarr as through the reader
    vid, part, view, _, start, n = plain[-1]
    raw = np.asarray(group[f"parts/{part}/b2.tokens"][start : start + n])
    np.testing.assert_array_equal(
        raw, fs.read(vid, view, tensors=["b2.tokens"], dequantise=False)["b2.tokens"]
    )


def test_dask_slices_equal_the_reader(finalized):
    fs = FeatureStore(finalized)
    tokens = da.from_zarr(str(finalized), component="parts/p0000/b2.tokens")
    scale = da.from_zarr(str(finalized), component="parts/p0000/b3.q.scale")
    q = da.from_zarr(str(finalized), component="parts/p0000/b3.q")
    assert tokens.dtype == np.float16 and tokens.shape[1:] == (5, 16)
    for rec in [v for v in fs.videos if v.part == "p0000"][:2]:  # dask adds ~50 ms a slice
        for view, (start, n) in rec.views.items():
            want = fs.read(rec.id, view, tensors=["b2.tokens", "b3.q"])
            np.testing.assert_array_equal(
                tokens[start : start + n].compute().astype(np.float32), want["b2.tokens"]
            )
            deq = (
                q[start : start + n].astype(np.float32)
                * scale[start : start + n].astype(np.float32)[..., None]
            )
            np.testing.assert_array_equal(deq.compute(), want["b3.q"])


def test_xarray_opens_a_part(finalized):
    fs = FeatureStore(finalized)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes commits.jsonl is no zarr node: expected
        ds = xr.open_zarr(str(finalized), group="parts/p0001", consolidated=False)
    assert {t.name for t in TENSORS} | {"time_s", "frame_index", "padded", "b3.q.scale"} <= set(ds.data_vars)
    assert ds["b2.tokens"].dims == ("row", "token", "channel")
    assert ds["b2.pooled"].dims == ("row", "cell", "channel") and ds["b3.q"].dims[-1] == "head_channel"
    assert ds["final.cls"].dims == ("row", "embed")
    rec = fs.video(video_id(7))
    for view, (start, n) in rec.views.items():
        got = ds["b2.tokens"].isel(row=slice(start, start + n)).values
        want = fs.read(rec.id, view, tensors=["b2.tokens"], dequantise=False)["b2.tokens"]
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(
            ds["frame_index"].isel(row=slice(start, start + n)).values,
            fs.row_meta(rec.id, view)["frame_index"],
        )  # 0 is data, not a fill value


def test_inspect_summarises(finalized):
    info = inspect(finalized)
    json.dumps(info)  # JSON-able
    assert {"videos", "frames", "failures", "tensors", "bytes_per_frame", "complete"} <= set(info)
    fs = FeatureStore(finalized)
    assert info["videos"] == 9 and info["complete"] is True and info["parts"] == ["p0000", "p0001"]
    assert info["frames"] == sum(n for v in fs.videos for _, n in v.views.values())
    assert [f["id"] for f in info["failures"]] == ["broken_clip"] and info["failures"][0]["stage"] == "decode"
    assert [t["name"] for t in info["tensors"]] == [t.name for t in TENSORS]
    assert info["bytes_per_frame"]["b2.tokens"] == 5 * 16 * 2
    assert info["bytes_per_frame"]["b3.q"] == 5 * 2 * 8 + 5 * 2 * 2  # int8 values + a float16 scale per token
    assert info["bytes_per_frame"]["total"] == sum(t.bytes_per_frame for t in TENSORS)
    assert 0 < info["disk_bytes"]


def test_finalize_an_empty_store(new_store):
    path = new_store()
    assert finalize(path)["videos"] == 0
    group = zarr.open_group(str(path), mode="r")
    assert len(group["index/row_start"][:]) == 0 and inspect(path)["videos"] == 0


def test_reader_opens_an_fsspec_url(finalized):
    """The store reads through fsspec (here file://) exactly as from a local path."""
    path = finalized[0] if isinstance(finalized, tuple) else finalized
    local, remote = FeatureStore(path), FeatureStore(f"file://{Path(path).resolve()}")
    assert [v.id for v in remote.videos] == [v.id for v in local.videos] and remote.complete
    for v in local.videos[:3]:
        for view in v.views:
            a, b = local.read(v.id, view), remote.read(v.id, view)
            assert a.keys() == b.keys()
            for name in a:
                np.testing.assert_array_equal(a[name], b[name])
