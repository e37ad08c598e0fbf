"""``twostage predict``: raw videos give the store's predictions, foreign weights are refused, csv/jsonl
output, bad files skipped and reported."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.commands.predict import main
from stages.core.config import from_dict, load_config
from stages.core.errors import CheckpointError
from stages.extract.config import ExtractConfig
from stages.extract.stage import run_extract
from stages.predict.videos import check_weights, predict
from stages.train.config import TrainConfig
from stages.train.stage import run_train


@pytest.fixture(scope="module")
def trained(appearance_videos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store of the 8 appearance videos (tiny random-init ViT) and a linear head trained on it."""
    tmp = tmp_path_factory.mktemp("predict")
    cfg = load_config(ExtractConfig, None, [
        f"source={appearance_videos / 'labels.csv'}", f"store.path={tmp / 's.zarr'}", "run.progress=false",
        "run.decode_workers=1", "backbone.name=test_openclip_vit", "tensors=[final.cls]",
        "sampling.frames=4", "sampling.temporal_views=2",
    ])  # fmt: skip
    assert run_extract(cfg).failed == 0
    train = from_dict(TrainConfig, {
        "data": {"store": str(tmp / "s.zarr"), "val_fraction": 0.25, "workers": 0, "batch_size": 4,
                 "frames": 4},
        "run": {"out": str(tmp / "run"), "plots": False, "log_every": 1000},
        "optim": {"epochs": 1}, "head": {"name": "linear"},
    })  # fmt: skip
    run_train(train)
    return tmp / "s.zarr", tmp / "run" / "last.pt"


def videos(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*.mp4"))


def test_raw_videos_predict_what_the_store_predicts(trained, appearance_videos) -> None:
    store, ckpt = trained
    from_store = predict(str(ckpt), [str(store)], topk=4, progress=False)
    from_videos = predict(str(ckpt), videos(appearance_videos), topk=4, progress=False)
    assert from_videos["failures"] == [] and len(from_videos["predictions"]) == 8
    a = {Path(r["source"]).name: dict(r["top"]) for r in from_store["predictions"]}
    b = {Path(r["source"]).name: dict(r["top"]) for r in from_videos["predictions"]}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for c in a[name]:
            assert b[name][c] == pytest.approx(a[name][c], abs=2e-3)  # fp16 features


def test_foreign_backbone_weights_are_refused_naming_them(trained, appearance_videos, tmp_path) -> None:
    _, ckpt = trained
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["store"]["backbone"]["sha256"] = "ab" * 32  # trained on features of other weights
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="sha256.*" + "ab" * 32):
        predict(str(bad), videos(appearance_videos)[:1], progress=False)


def test_a_memory_head_predicts_online_chunk_by_chunk(trained, appearance_videos, tmp_path) -> None:
    store, _ = trained
    train = from_dict(TrainConfig, {
        "data": {"store": str(store), "val_fraction": 0.25, "workers": 0, "batch_size": 4, "frames": 2},
        "run": {"out": str(tmp_path / "mem"), "plots": False, "log_every": 1000},
        "optim": {"epochs": 1}, "head": {"name": "memvit", "options": {"depth": 1, "memory": 1}},
    })  # fmt: skip
    run_train(train)
    ckpt = str(tmp_path / "mem" / "last.pt")
    from_store = predict(ckpt, [str(store)], topk=2, progress=False)["predictions"]
    from_videos = predict(ckpt, videos(appearance_videos), topk=2, progress=False)["predictions"]
    assert len(from_store) == len(from_videos) == 8
    for row in from_store:  # 4 stored rows in the first view: chunks 0 and 1 of 2 frames, the last one scored
        assert [c["chunk"] for c in row["chunks"]] == [0, 1]
        assert row["top"][0][0] == row["chunks"][-1]["class"]
        assert row["top"][0][1] == pytest.approx(row["chunks"][-1]["prob"], abs=1e-5)
    by_source = {Path(r["source"]).name: r["top"] for r in from_videos}
    for row in from_store:  # raw videos through stage one give what the store gives
        got = by_source[Path(row["source"]).name]
        assert [c for c, _ in got] == [c for c, _ in row["top"]]
        assert [p for _, p in got] == pytest.approx([p for _, p in row["top"]], abs=1e-4)


@pytest.mark.parametrize(
    ("weights", "match"), [("missing", "are missing"), ("other", "have sha256 [0-9a-f]{64}, but")]
)
def test_missing_or_other_weights_file_refused_before_decoding(weights, match, tmp_path) -> None:
    file = tmp_path / "w.safetensors"
    if weights == "other":
        file.write_bytes(b"other weights")
    with pytest.raises(CheckpointError, match=f"{match}.*{'cd' * 32}|{'cd' * 32}.*{match}"):
        check_weights({"sha256": "cd" * 32}, str(file), "CHECKPOINT x")


def test_bad_file_skipped_and_reported_csv_and_jsonl(trained, appearance_videos, tmp_path, capsys) -> None:
    _, ckpt = trained
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    inputs = [*videos(appearance_videos)[:2], str(broken)]
    assert main([str(ckpt), *inputs, "--out", str(tmp_path / "p.csv"), "--topk", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.mp4" in err
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 2 and set(rows[0]) == {"id", "source", "class_1", "prob_1", "class_2", "prob_2"}
    assert float(rows[0]["prob_1"]) >= float(rows[0]["prob_2"])
    assert main([str(ckpt), *inputs, "--out", str(tmp_path / "p.jsonl"), "--no-progress"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and abs(sum(p for _, p in lines[0]["top"]) - 1.0) < 1e-3  # 4 classes, top-5


def test_window_predictions_change_where_the_content_changes(trained, tmp_path) -> None:
    """Two 16-frame appearance clips of different classes back to back: 2 s windows, hop 2 s, follow them."""
    _, ckpt = trained
    from stages.video.synth import class_names, render, write_video

    names = class_names("appearance")
    parts = [render("appearance", label, (1, 0), size=64, frames=16)[0] for label in (0, 1)]
    long = tmp_path / "long.mp4"
    write_video(long, np.concatenate(parts), fps=8.0)
    first = predict(str(ckpt), [str(long)], topk=1, progress=False, window=2.0, hop=2.0)
    rows = first["predictions"]
    assert [(r["start"], r["end"]) for r in rows] == [(0.0, 2.0), (2.0, 4.0)]
    # the head is barely trained: compare each window with the prediction for its clip alone
    alone = []
    for k, part in enumerate(parts):
        write_video(tmp_path / f"part{k}.mp4", part, fps=8.0)
        alone.append(predict(str(ckpt), [str(tmp_path / f"part{k}.mp4")], topk=4, progress=False))
    for row, one in zip(rows, alone, strict=True):
        assert row["top"][0][0] == one["predictions"][0]["top"][0][0]
    assert names[0] != names[1]
    assert rows[0]["top"] != rows[1]["top"]


def test_raw_videos_need_no_training_store_the_checkpoint_carries_the_extract_config(
    trained, appearance_videos, tmp_path
) -> None:
    store, ckpt = trained
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["store"]["extract"]["sampling"]["frames"] == 4
    state["store"]["path"] = str(tmp_path / "moved.zarr")  # the training store is gone
    moved = tmp_path / "moved.pt"
    torch.save(state, moved)
    got = predict(str(moved), videos(appearance_videos)[:2], topk=2, progress=False)
    want = predict(str(ckpt), videos(appearance_videos)[:2], topk=2, progress=False)
    assert [r["top"] for r in got["predictions"]] == [r["top"] for r in want["predictions"]]
    del state["store"]["extract"]  # an older checkpoint: the store's attributes were the only record
    torch.save(state, moved)
    with pytest.raises(CheckpointError, match="is gone"):
        predict(str(moved), videos(appearance_videos)[:1], progress=False)
