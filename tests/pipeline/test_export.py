"""``twostage export``: one array per video equal to the store's rows (int8 dequantised, tokens/pooled in
their full per-frame shape), a manifest that says what each file is; and the whole path from a source list
with splits and segments through stage one to exported arrays."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.commands import export as export_cmd
from stages.core.errors import StoreError, StoreMismatchError
from store import FeatureStore
from tests.stages.train.conftest import make_store, token_tensors


@pytest.fixture(scope="module")
def token_store(tmp_path_factory) -> Path:
    """4 videos, 2 views of 8 rows: residual streams (one int8), a pooled grid and a CLS embedding."""
    return make_store(tmp_path_factory.mktemp("export") / "t.zarr", videos=4, rows=8, tensors=token_tensors())


@pytest.mark.parametrize("tensor", ["final.cls", "b1.tokens", "b1.pooled"])
def test_npy_arrays_equal_the_store_rows(tmp_path, token_store, tensor, monkeypatch, capsys):
    monkeypatch.setattr(export_cmd, "CHUNK_ROWS", 3)  # several chunks per video
    out = tmp_path / "feats"
    assert export_cmd.main([str(token_store), str(out), "--tensor", tensor, "--view", "1"]) == 0
    assert f"exported 4 videos of {tensor} (view 1" in capsys.readouterr().out
    fs = FeatureStore(token_store)
    for rec in fs.videos:
        got = np.load(out / f"{rec.id}.npy")
        want = fs.read(rec.id, 1, tensors=[tensor])[tensor]  # dequantised float32
        assert got.dtype == np.float32 and got.shape == (8, *fs.spec.tensor(tensor).shape)
        np.testing.assert_array_equal(got, want)
    assert not list(out.glob(".*.part"))


def test_manifest_and_npz(tmp_path, token_store):
    out = tmp_path / "npz"
    manifest = export_cmd.export(str(token_store), out, tensor="final.cls", fmt="npz", dtype="float16")
    fs = FeatureStore(token_store)
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["id"] for r in rows] == [v.id for v in fs.videos] == [v["id"] for v in manifest["videos"]]
    first = rows[0]
    assert (first["label"], first["label_index"], first["file"], first["frames"]) == (
        "axis0+",
        "0",
        "v000.npz",
        "8",
    )
    assert (float(first["time_start"]), float(first["time_end"]), float(first["feature_fps"])) == (
        0.0,
        0.875,
        8.0,
    )
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["shape"] == [16] and saved["classes"] == list(fs.classes) and saved["dtype"] == "float16"
    with np.load(out / "v001.npz") as z:
        np.testing.assert_array_equal(
            z["features"], fs.read("v001", 0, tensors=["final.cls"], dtype=np.float16)["final.cls"]
        )
        np.testing.assert_array_equal(z["time_s"], np.arange(8) / 8.0)


def test_bad_exports_are_refused(tmp_path, token_store):
    out = tmp_path / "once"
    export_cmd.export(str(token_store), out, tensor="final.cls")
    incomplete = make_store(tmp_path / "inc.zarr", videos=2, rows=8, complete=False)
    cases = [
        (dict(tensor="final.cls"), out, StoreError, "already holds an export .*--overwrite"),
        (
            dict(tensor="b9.tokens"),
            tmp_path / "a",
            StoreMismatchError,
            "holds no tensor 'b9.tokens'; it holds",
        ),
        (
            dict(tensor="final.cls", view=2),
            tmp_path / "b",
            StoreMismatchError,
            r"4 videos .* have no view 2 .*views \[0, 1\]",
        ),
        (
            dict(tensor="final.cls", split="test"),
            tmp_path / "c",
            StoreError,
            r"no 'test' videos \(splits present: \['None'\]\)",
        ),
    ]
    for kwargs, target, error, match in cases:
        with pytest.raises(error, match=match):
            export_cmd.export(str(token_store), target, **kwargs)
    with pytest.raises(StoreError, match="is incomplete .*--allow-incomplete"):
        export_cmd.export(str(incomplete), tmp_path / "d", tensor="final.cls")
    assert export_cmd.export(str(incomplete), tmp_path / "d", tensor="final.cls", allow_incomplete=True)[
        "videos"
    ]
    assert len(export_cmd.export(str(token_store), out, tensor="final.cls", overwrite=True)["videos"]) == 4


def test_source_list_with_splits_and_segments_through_extraction_to_export(direction_videos, tmp_path):
    from stages.core.config import load_config
    from stages.extract.config import ExtractConfig
    from stages.extract.stage import run_extract

    (tmp_path / "videos").symlink_to(direction_videos / "videos")  # 3-s videos (24 frames at 8 fps)
    src = tmp_path / "segments.csv"
    rows = [
        "videos/000000.mp4,left,0,1.5,train",
        "videos/000000.mp4,left,1.5,3,val",
        "videos/000001.mp4,right,,,test",
    ]
    src.write_text("path,label,start,end,split\n" + "\n".join(rows) + "\n")
    store = tmp_path / "s.zarr"
    cfg = load_config(
        ExtractConfig,
        None,
        [
            f"source={src}",
            f"store.path={store}",
            "backbone.name=test_openclip_vit",
            "backbone.batch_frames=16",
            "run.progress=false",
            "run.decode_workers=1",
            "sampling.frames=4",
            "sampling.stride=2",
            "tensors=[final.cls]",
            "classes=[left, right, up, down]",
        ],
    )
    assert run_extract(cfg).committed == 3
    fs = FeatureStore(store)
    video = str(tmp_path / "videos" / "000000.mp4")
    meta = {v.id: v.meta for v in fs.videos}
    assert (
        meta["videos__000000__0-1.5"]["split"] == "train" and meta["videos__000000__0-1.5"]["group"] == video
    )
    assert meta["videos__000000__1.5-3"]["group"] == video and meta["videos__000001"]["split"] == "test"
    manifest = export_cmd.export(str(store), tmp_path / "out", tensor="final.cls", split="train")
    (row,) = manifest["videos"]
    assert row["id"] == "videos__000000__0-1.5" and 0.0 <= row["time_start"] < row["time_end"] <= 1.5
    np.testing.assert_array_equal(
        np.load(tmp_path / "out" / row["file"]), fs.read(row["id"], 0, tensors=["final.cls"])["final.cls"]
    )
    later = export_cmd.export(str(store), tmp_path / "val", tensor="final.cls", split="val")["videos"][0]
    assert 1.5 <= later["time_start"] < later["time_end"] <= 3.0  # the second segment's own window
