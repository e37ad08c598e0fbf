"""Stage two does not train on a store that ``verify`` rejects (issue "a store nobody can silently damage",
failure 3): each video's checksums are checked the first time the loader reads it."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.core.errors import StoreCorruptError
from stages.train.evaluate import evaluate_checkpoint
from stages.train.stage import run_train
from store import FeatureStore
from store.index import read_log, write_log_line
from tests.stages.train.conftest import make_cfg


@pytest.fixture
def store(store_factory, tmp_path) -> Path:
    """A private copy of a 16-video store that a test may damage."""
    return Path(shutil.copytree(store_factory("integrity", videos=16, rows=8), tmp_path / "s.zarr"))


def damage_values(path: Path, video: str, value: float = np.nan) -> None:
    fs = FeatureStore(path)
    rec = fs.video(video)
    array = fs.array(rec.part, "final.cls")
    for start, n in rec.views.values():  # every view: whichever one an epoch reads is damaged
        values = np.asarray(array[start : start + n])
        values[n // 2, 3] = value
        array[start : start + n] = values


def flip_byte(path: Path) -> None:
    """One flipped byte in a final.cls shard (lz4: the chunk still decodes, to other values)."""
    shard = sorted(p for p in (path / "parts/p0000/final.cls/c").rglob("*") if p.is_file())[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["nan", "inf", "flipped byte", "moved row pointer"])
def test_training_stops_on_a_damaged_video_naming_it_and_the_fix(tmp_path, store, damage):
    if damage == "nan":
        damage_values(store, "v003")
    elif damage == "inf":
        damage_values(store, "v003", np.inf)
    elif damage == "flipped byte":
        flip_byte(store)
    else:
        log = store / "parts/p0000/commits.jsonl"
        records, _ = read_log(log)
        records[3]["views"][0]["row_start"] += 2  # a valid line CRC: only the video digest can tell
        log.unlink()
        for r in records:
            write_log_line(log, r)
    cfg = make_cfg(tmp_path / "out", store, data={"val_fraction": 0.0}, optim={"epochs": 2})  # both views
    with pytest.raises(
        StoreCorruptError, match=r"video 'v0\d\d' of .* is damaged .*twostage verify.*integrity=skip"
    ):
        run_train(cfg)


def test_skip_leaves_the_damaged_video_out_with_a_warning(tmp_path, store):
    damage_values(store, "v003")
    cfg = make_cfg(
        tmp_path / "out", store, data={"val_fraction": 0.0, "integrity": "skip"}, optim={"epochs": 1}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_train(cfg)
    assert result["train_clips"] == 15  # 16 videos, one left out
    assert any("skipping damaged video 'v003'" in str(w.message) for w in caught)


def test_integrity_off_trusts_the_store(tmp_path, store):
    damage_values(store, "v003")
    cfg = make_cfg(
        tmp_path / "out", store, data={"val_fraction": 0.0, "integrity": "off"}, optim={"epochs": 1}
    )
    assert run_train(cfg)["train_clips"] == 16


def test_eval_stops_on_a_damaged_held_out_video_unless_asked_to_skip(tmp_path, store):
    run_train(make_cfg(tmp_path / "out", store, optim={"epochs": 1}))
    trained = set(torch.load(tmp_path / "out/last.pt", weights_only=True)["data"]["train_ids"])
    held = [v for v in FeatureStore(store).videos if v.id not in trained]
    damage_values(store, held[0].id)
    with pytest.raises(StoreCorruptError, match=held[0].id):
        evaluate_checkpoint(str(tmp_path / "out/last.pt"), str(store), workers=0)
    got = evaluate_checkpoint(str(tmp_path / "out/last.pt"), str(store), workers=0, integrity="skip")
    assert got["videos"] == len(held) - 1


def test_a_damaged_commit_line_in_a_finished_store_is_refused(tmp_path, store):
    log = store / "parts/p0000/commits.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"fps":8.0', '"fps":9.0', 1)  # no longer matches its own CRC
    assert lines[2] != log.read_text().splitlines(keepends=True)[2]
    log.write_text("".join(lines))
    cfg = make_cfg(tmp_path / "out", store, optim={"epochs": 1})
    with pytest.raises(StoreCorruptError, match=r"damaged commit lines .*line 3.*twostage verify"):
        run_train(cfg)
