"""Source-list splits in stage two: a store whose videos carry ``split`` (train/val/test, from stage one's
source list) trains on ``train``, validates on ``val`` (or on ``data.val_fraction`` of ``train`` without
one), and ``twostage eval --split test|val|train`` scores that split; asking for a split the store does
not have is refused with a message that says what it has."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.commands import evaluate
from stages.core.errors import ConfigError, StoreError
from stages.train.data import split_ids
from stages.train.evaluate import evaluate_checkpoint, select_eval_ids, store_splits
from stages.train.stage import run_train, select_videos
from store import FeatureStore, PartWriter, StoreSpec, VideoEntry, ViewRows, create_store, finalize
from tests.stages.train.conftest import CLASSES, EMBED, backbone, cls_tensors, direction_frames, make_cfg

ROWS = 8


def make_split_store(path: Path, splits: list[str | None], unlabelled: tuple[int, ...] = ()) -> Path:
    """One direction video per entry of ``splits`` (its ``split`` meta; None: no split), classes balanced."""
    spec = StoreSpec(
        backbone=backbone(),
        preprocessing={"input_size": 8},
        tensors=cls_tensors(),
        sampling={"mode": "clips", "frames": ROWS, "stride": 1},
        classes=CLASSES,
        config={"test": True},
        storage={"shard_mb": 1.0},
    )
    create_store(path, spec)
    axes = np.linalg.qr(np.random.default_rng(999).standard_normal((EMBED, 2)))[0].T * 2.0  # [2, E]
    with PartWriter(path, "p0000", commit_interval_s=3600.0) as w:
        for i, split in enumerate(splits):
            rng = np.random.default_rng([7, i])
            label = -1 if i in unlabelled else i % len(CLASSES)
            cls = direction_frames(
                rng, max(label, 0), ROWS, EMBED, axes, 0.3 * rng.standard_normal(EMBED), 0.1
            )
            meta = {"split": split} if split else {}
            entry = VideoEntry(f"s{i:03d}", label, f"/synthetic/s{i:03d}.mp4", 8.0, 2 * ROWS, meta=meta)
            times = np.arange(ROWS) / 8.0
            w.add(entry, [ViewRows(0, {"final.cls": cls}, times, np.arange(ROWS) * 2)])
    finalize(path)
    return path


@pytest.fixture(scope="module")
def split_store(tmp_path_factory) -> Path:
    """16 train, 8 val, 8 test videos, plus 2 unlabelled test videos."""
    splits = ["train"] * 16 + ["val"] * 8 + ["test"] * 10
    return make_split_store(tmp_path_factory.mktemp("splits") / "s.zarr", splits, unlabelled=(32, 33))


def ids_of(store: Path, split: str, labelled: bool = True) -> list[str]:
    return [
        v.id
        for v in FeatureStore(store).videos
        if v.meta.get("split") == split and (v.label >= 0 or not labelled)
    ]


def test_training_uses_the_train_split_and_validates_on_val(tmp_path, split_store):
    fs = FeatureStore(split_store)
    assert store_splits(fs) == {s: ids_of(split_store, s) for s in ("train", "val", "test")}
    train, val_store, val = select_videos(make_cfg(tmp_path, split_store), fs)
    assert (train, val_store, val) == (ids_of(split_store, "train"), fs, ids_of(split_store, "val"))


def test_without_a_val_split_val_fraction_of_train_is_held_out(tmp_path):
    store = make_split_store(tmp_path / "tt.zarr", ["train"] * 24 + ["test"] * 4)
    fs = FeatureStore(store)
    train, val_store, val = select_videos(make_cfg(tmp_path, store, data={"val_fraction": 0.25}), fs)
    kept, held = split_ids(fs, 0.25)
    assert train == [v for v in kept if v in ids_of(store, "train")] and val_store is fs
    assert val == [v for v in held if v in ids_of(store, "train")] and val and not set(val) & set(train)
    none = select_videos(make_cfg(tmp_path, store, data={"val_fraction": 0.0}), fs)
    assert none == (ids_of(store, "train"), None, [])


def test_a_separate_val_store_still_trains_on_the_train_split(tmp_path, split_store):
    other = make_split_store(tmp_path / "v.zarr", [None] * 4)
    train, val_store, val = select_videos(
        make_cfg(tmp_path, split_store, data={"val_store": str(other)}), FeatureStore(split_store)
    )
    assert train == ids_of(split_store, "train") and val == [v.id for v in FeatureStore(other).videos]
    assert val_store.path == FeatureStore(other).path and len(val) == 4


def test_unsplit_videos_among_split_ones_are_left_out_with_a_warning(tmp_path):
    store = make_split_store(tmp_path / "mixed.zarr", ["train"] * 8 + [None] * 2 + ["val"] * 4)
    with pytest.warns(UserWarning, match="2 labelled videos of .* have no split"):
        train, _, val = select_videos(make_cfg(tmp_path, store), FeatureStore(store))
    assert len(train) == 8 and len(val) == 4


def test_a_split_store_without_train_videos_is_refused(tmp_path):
    store = make_split_store(tmp_path / "test_only.zarr", ["test"] * 4)
    with pytest.raises(
        StoreError, match=r"data.store train: .* has no labelled 'train' videos; it has \{'test': 4\}"
    ):
        select_videos(make_cfg(tmp_path, store), FeatureStore(store))


def test_train_then_eval_each_split(tmp_path, split_store, capsys):
    out = tmp_path / "run"
    run_train(make_cfg(out, split_store, head={"name": "linear"}, optim={"epochs": 2}))
    capsys.readouterr()  # the training log
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["data"]["train_ids"] == ids_of(split_store, "train")
    assert ckpt["data"]["val_ids"] == ids_of(split_store, "val")
    args = [str(out / "last.pt"), str(split_store), "--workers", "0"]
    assert evaluate.main([*args, "--split", "test", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["split"], got["videos"], got["training_videos"]) == (
        "test",
        8,
        0,
    )  # the 2 unlabelled left out
    assert got["split_description"] == "the 'test' split (8 labelled videos; 0 trained on)"
    assert evaluate.main([*args, "--split", "val"]) == 0
    assert "the 'val' split (8 labelled videos; 0 trained on): 8 videos" in capsys.readouterr().out
    assert evaluate.main([*args, "--split", "train"]) == 0
    assert "WARNING: 16 of the 16 scored videos were used to train" in capsys.readouterr().err
    heldout = evaluate_checkpoint(str(out / "last.pt"), str(split_store), workers=0)
    assert heldout["videos"] == 16 and heldout["training_videos"] == 0  # val + test


def test_asking_for_a_split_the_store_does_not_have_is_refused(tmp_path, split_store, store_factory):
    ckpt = {"data": {"train_ids": []}}
    plain = FeatureStore(store_factory("plain_for_splits", videos=4, rows=8))
    mixed = FeatureStore(make_split_store(tmp_path / "u.zarr", ["train", "train", "test"], unlabelled=(2,)))
    cases = [
        (plain, "test", StoreError, r"--split test: no video of .* has a split .*--split heldout"),
        (
            mixed,
            "test",
            StoreError,
            r"no labelled 'test' videos; it has \{'test \(unlabelled\)': 1, 'train': 2\}",
        ),
        (
            FeatureStore(split_store),
            "validation",
            ConfigError,
            "expected one of heldout, all, train, val, test",
        ),
    ]
    for fs, split, error, match in cases:
        with pytest.raises(error, match=match):
            select_eval_ids(ckpt, fs, split)
