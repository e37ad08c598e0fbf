"""Stage two end to end: temporal heads learn what a frame average cannot, bad inputs are refused before
training, ``twostage eval`` re-measures a checkpoint, the CLI and the shipped configs."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.commands import evaluate
from pipeline.commands.train import main
from stages.core.config import load_config
from stages.core.errors import CheckpointError, ConfigError, NotAStoreError, StoreError, StoreMismatchError
from stages.train.config import TrainConfig
from stages.train.data import split_ids
from stages.train.evaluate import evaluate_checkpoint
from stages.train.stage import run_train
from store import FeatureStore
from tests.stages.train.conftest import make_cfg, read_jsonl, token_tensors

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def val_store(store_factory) -> Path:
    """24 held-out direction videos (another seed: other content vectors and noise)."""
    return store_factory("direction_val", videos=24, seed=1, id_prefix="val")


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory, direction_store, val_store) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("linear")
    cfg = make_cfg(
        out,
        direction_store,
        data={"val_store": str(val_store)},
        head={"name": "linear"},
        optim={"epochs": 8, "lr": 1e-2},
        run={"eval_every": 100},
    )
    return out, run_train(cfg)


# ----------------------------------------------------------------------------------------- learning


def test_a_temporal_head_beats_linear_on_the_direction_task(tmp_path, direction_store, val_store, linear_run):
    _, linear = linear_run
    cfg = make_cfg(
        tmp_path,
        direction_store,
        data={"val_store": str(val_store)},
        head={"name": "vivit_fe", "options": {"depth": 1}},
        optim={"epochs": 10, "lr": 1e-2},
        run={"eval_every": 100},
    )
    temporal = run_train(cfg)
    print(
        f"direction, 24 held-out videos, 4 classes: linear top-1 {linear['top1']:.3f}, "
        f"vivit_fe top-1 {temporal['top1']:.3f}"
    )
    assert linear["top1"] <= 0.5  # chance is 0.25: a frame average carries no label
    assert temporal["top1"] >= 0.7 and temporal["top1"] - linear["top1"] >= 0.3


def test_evl_trains_on_residual_streams_with_token_dropout(tmp_path, token_store):
    cfg = make_cfg(
        tmp_path,
        token_store,
        head={"name": "evl", "options": {"layers": 2, "dropout": 0.0}},
        data={"token_dropout": 0.2, "frames": 4, "stride": 2},
        optim={"epochs": 2},
    )
    result = run_train(cfg)
    header = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert header["head"]["inputs"] == ["b0.tokens", "b1.tokens", "embed.tokens"]  # q/k recomputed
    assert result["epochs_done"] == 2 and result["top1"] is not None


def test_init_from_a_shorter_clip_checkpoint_interpolates_the_position_embedding(tmp_path, direction_store):
    short = make_cfg(
        tmp_path / "t4",
        direction_store,
        head={"name": "vivit_fe", "options": {"depth": 1}},
        data={"frames": 4, "stride": 2},
        optim={"epochs": 1},
    )
    run_train(short)
    long = make_cfg(
        tmp_path / "t8",
        direction_store,
        optim={"epochs": 1},
        head={"name": "vivit_fe", "options": {"depth": 1}, "init_from": str(tmp_path / "t4" / "last.pt")},
    )
    run_train(long)
    header = read_jsonl(tmp_path / "t8" / "metrics.jsonl")[0]
    assert header["init_from"]["report"]["interpolated"] == ["pos_embed"]
    pos_embed = torch.load(tmp_path / "t8" / "last.pt", weights_only=True)["model"]["pos_embed"]
    assert tuple(pos_embed.shape) == (1, 9, 16)  # 1 + 8 frames


# ----------------------------------------------------------------------------------------- refusals


def _other_backbone_checkpoint(tmp_path: Path, store_factory) -> str:
    store = store_factory("other_backbone", videos=8, name="other-vit")
    run_train(make_cfg(tmp_path / "other", store, optim={"epochs": 1}))
    return str(tmp_path / "other" / "last.pt")


BAD_INPUTS = [  # (case, config sections, error, message pattern)
    (
        "incomplete store",
        {"store": "incomplete"},
        StoreError,
        r"incomplete \(8 videos.*run.allow_incomplete=true",
    ),
    ("not a store", {"store": "missing"}, NotAStoreError, r"not a twostage store"),
    (
        "head lacks layers",
        {"head": {"name": "evl", "options": {"layers": 2}}},
        StoreMismatchError,
        r"evl with head.options.layers=2 needs the tokens of the last 2 blocks "
        r"\(\[.b0.tokens., .b1.tokens.\]\)",
    ),
    (
        "unknown head option",
        {"head": {"name": "linear", "options": {"depth": 2}}},
        ConfigError,
        r"head.options.depth: head 'linear' has no option 'depth'; its options: feature, dropout",
    ),
    ("too many frames", {"data": {"frames": 12, "stride": 2}}, StoreMismatchError, r"needs 23 stored rows"),
    (
        "checkpoint of another head",
        {"head": {"name": "vivit_fe", "init_from": "linear"}},
        CheckpointError,
        r"holds a 'linear' head, but this run uses head 'vivit_fe'",
    ),
    (
        "checkpoint of another backbone",
        {"head": {"name": "linear", "init_from": "other"}},
        CheckpointError,
        r"backbone.name: 'other-vit' -> 'tiny-vit'",
    ),
    (
        "not a checkpoint",
        {"head": {"name": "linear", "init_from": "text"}},
        CheckpointError,
        r"not a readable stage-two checkpoint",
    ),
    (
        "val store of another backbone",
        {"data": {"val_store": "other"}},
        StoreError,
        r"does not fit data.store.*backbone.name: 'tiny-vit' -> 'other-vit'",
    ),
]


@pytest.mark.parametrize("case, sections, error, match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_are_refused_before_training(
    tmp_path, store_factory, direction_store, linear_run, case, sections, error, match
):
    stores = {
        "incomplete": store_factory("incomplete", videos=8, complete=False),
        "missing": tmp_path / "nowhere.zarr",
        "other": store_factory("other_backbone", videos=8, name="other-vit"),
    }
    checkpoints = {"linear": str(linear_run[0] / "last.pt"), "text": str(tmp_path / "notes.pt")}
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    sections = copy.deepcopy(sections)
    store = stores.get(sections.pop("store", None), direction_store)
    if "val_store" in sections.get("data", {}):
        sections["data"]["val_store"] = str(stores["other"])
    init = sections.get("head", {}).get("init_from")
    if init == "other":
        sections["head"]["init_from"] = _other_backbone_checkpoint(tmp_path, store_factory)
    elif init:
        sections["head"]["init_from"] = checkpoints[init]
    with pytest.raises(error, match=match):
        run_train(make_cfg(tmp_path / "run", store, **sections))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before anything was written


def test_an_incomplete_store_trains_when_allowed(tmp_path, store_factory):
    store = store_factory("incomplete", videos=8, complete=False)
    result = run_train(make_cfg(tmp_path, store, run={"allow_incomplete": True}, optim={"epochs": 1}))
    assert result["epochs_done"] == 1


def test_resuming_with_another_config_is_refused(tmp_path, direction_store):
    run_train(make_cfg(tmp_path, direction_store, optim={"epochs": 1}))
    with pytest.raises(
        CheckpointError, match=r"another config \(optim.lr: 0.003 -> 0.01\).*run.resume=false"
    ):
        run_train(make_cfg(tmp_path, direction_store, optim={"epochs": 1, "lr": 1e-2}))
    fresh = run_train(
        make_cfg(tmp_path, direction_store, optim={"epochs": 1, "lr": 1e-2}, run={"resume": False})
    )
    assert fresh["epochs_done"] == 1


# ----------------------------------------------------------------------------------------- twostage eval


def test_eval_remeasures_the_checkpoint(linear_run, val_store, capsys):
    out, result = linear_run
    assert evaluate.main([str(out / "last.pt"), str(val_store), "--json", "--workers", "0"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (
        got["top1"] == result["top1"]
        and got["videos"] == 24
        and got["clips"] == 48
        and got["head"] == "linear"
    )
    assert evaluate.main([str(out / "last.pt"), str(val_store), "--workers", "0"]) == 0
    assert "top-5 n/a (< 5 classes)" in capsys.readouterr().out


def test_eval_scores_only_the_videos_the_checkpoint_did_not_train_on(tmp_path, direction_store, capsys):
    out = tmp_path / "split"
    result = run_train(make_cfg(out, direction_store, optim={"epochs": 2}))
    ckpt = torch.load(out / "last.pt", weights_only=True)
    train_ids, val_ids = split_ids(FeatureStore(direction_store), 0.25)
    assert ckpt["data"]["train_ids"] == train_ids and ckpt["data"]["val_ids"] == val_ids
    got = evaluate_checkpoint(str(out / "last.pt"), str(direction_store), workers=0)
    assert got["videos"] == len(val_ids) < 48 and got["training_videos"] == 0
    assert got["top1"] == result["top1"] and got["split"] == "heldout"
    assert evaluate.main([str(out / "last.pt"), str(direction_store), "--workers", "0"]) == 0
    text = capsys.readouterr()
    assert f"held-out videos ({len(val_ids)} of 48; {len(train_ids)} training videos left out)" in text.out
    assert "WARNING" not in text.err
    everything = evaluate_checkpoint(str(out / "last.pt"), str(direction_store), split="all", workers=0)
    assert everything["videos"] == 48 and everything["training_videos"] == len(train_ids)
    assert (
        evaluate.main([str(out / "last.pt"), str(direction_store), "--split", "all", "--workers", "0"]) == 0
    )
    assert f"WARNING: {len(train_ids)} of the 48 scored videos were used to train" in capsys.readouterr().err


def test_eval_refuses_when_nothing_is_held_out(tmp_path, direction_store):
    out = tmp_path / "all"
    run_train(make_cfg(out, direction_store, data={"val_fraction": 0.0}, optim={"epochs": 1}))
    with pytest.raises(StoreError, match=r"all 48 labelled videos .* were used to train .* --split all"):
        evaluate_checkpoint(str(out / "last.pt"), str(direction_store), workers=0)


def test_eval_of_an_older_checkpoint_rederives_its_training_videos(tmp_path, direction_store):
    out = tmp_path / "old"
    run_train(make_cfg(out, direction_store, optim={"epochs": 1}))
    ckpt = torch.load(out / "last.pt", weights_only=True)
    del ckpt["data"]  # written before checkpoints recorded their training ids
    torch.save(ckpt, out / "old.pt")
    got = evaluate_checkpoint(str(out / "old.pt"), str(direction_store), workers=0)
    assert got["videos"] == len(split_ids(FeatureStore(direction_store), 0.25)[1])


def test_eval_refuses_a_store_of_another_backbone(linear_run, store_factory):
    other = store_factory("other_backbone", videos=8, name="other-vit")
    with pytest.raises(
        CheckpointError, match=r"does not fit the checkpoint.*backbone.name: 'tiny-vit' -> 'other-vit'"
    ):
        evaluate_checkpoint(str(linear_run[0] / "last.pt"), str(other), workers=0)


def test_eval_refuses_a_store_without_the_head_inputs(linear_run, store_factory):
    residual_only = token_tensors()[:4]  # no final.cls
    no_final = store_factory("no_final", videos=4, rows=8, tensors=residual_only)
    with pytest.raises(CheckpointError, match=r"does not fit.*tensor final.cls: \[16\] -> not stored"):
        evaluate_checkpoint(str(linear_run[0] / "last.pt"), str(no_final), workers=0)


# ----------------------------------------------------------------------------------------- CLI, configs


def test_help_lists_every_override(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    for key in (
        "data.store: str",
        "head.options: dict[str, Any]",
        "optim.accum_steps: int = 1",
        "run.bf16: bool = True",
    ):
        assert key in text


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_say_how_to_run_them(path):
    text = path.read_text()
    assert text.startswith("#") and "python -m stages.train configs/train/" + path.name in text
    cfg = load_config(TrainConfig, path, [])
    assert cfg.head.name in ("linear", "vivit_fe", "evl", "memvit")


def test_shipped_configs_exist():
    assert {p.name for p in (REPO / "configs" / "train").glob("*.yaml")} >= {
        "linear.yaml",
        "vivit_fe.yaml",
        "evl.yaml",
        "memvit.yaml",
    }


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, check=True, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    return done.stdout


@pytest.mark.slow
def test_end_to_end_synth_extract_train_eval(tmp_path, direction_videos):
    """Real videos -> stage one (tiny random backbone) -> `twostage train` -> `twostage eval`."""
    store, run = tmp_path / "tiny.zarr", tmp_path / "run"
    source = direction_videos / "labels.csv"
    _cli("stages.extract", str(REPO / "configs/extract/tiny.yaml"), f"source={source}", f"store.path={store}",
         "run.progress=false", "run.decode_workers=1")  # fmt: skip
    _cli("pipeline", "train", str(REPO / "configs/train/linear.yaml"), f"data.store={store}",
         f"run.out={run}", "optim.epochs=2", "data.workers=0", "data.val_fraction=0.3")  # fmt: skip
    metrics = json.loads(
        _cli("pipeline", "eval", str(run / "last.pt"), str(store), "--json", "--workers", "0")
    )
    assert metrics["videos"] == 12 and 0.0 <= metrics["top1"] <= 1.0 and metrics["epoch"] == 2
