"""The stage-two loop: schedule, metrics, multi-view evaluation, exact resume, accumulation, outputs, DDP."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from stages.core.config import from_dict, to_dict
from stages.core.errors import ConfigError
from stages.train.config import TrainConfig
from stages.train.data import ClipDataset, EpochLoader, split_ids
from stages.train.evaluate import evaluate
from stages.train.heads import Head
from stages.train.loop import lr_at
from stages.train.metrics import video_metrics
from stages.train.stage import run_train
from store import FeatureStore
from tests.stages.train.conftest import make_cfg, read_jsonl

TIMING = ("seconds", "clips_per_s", "peak_mem_mb", "eval_seconds", "out")


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in TIMING}


@pytest.fixture(scope="module")
def small_store(store_factory) -> Path:
    """16 videos, 2 views of 8 rows: fast loops."""
    return store_factory("small", videos=16, rows=8)


# ----------------------------------------------------------------------------------------- schedule


def test_lr_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    kw = {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 4, "total_steps": 14}
    lrs = [lr_at(s, **kw) for s in range(16)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and math.isclose(lrs[9], 0.55) and lrs[14] == lrs[15] == 0.1
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))  # never rises after warmup
    assert lr_at(0, lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=10) == 1.0


# ----------------------------------------------------------------------------------------- metrics


def test_video_metrics_top1_top5_and_mean_class_accuracy():
    probs = torch.tensor(
        [
            [0.6, 0.1, 0.1, 0.1, 0.05, 0.05],  # label 0: hit
            [0.5, 0.4, 0.1, 0.0, 0.0, 0.0],  # label 0: hit
            [0.5, 0.4, 0.1, 0.0, 0.0, 0.0],  # label 0: hit
            [0.5, 0.08, 0.2, 0.1, 0.07, 0.05],
        ]
    )  # label 1: miss, but in the top 5
    m = video_metrics(probs, torch.tensor([0, 0, 0, 1]))
    assert m["top1"] == 0.75 and m["top5"] == 1.0 and m["videos"] == 4
    assert m["mean_class_acc"] == 0.5  # class 0: 3/3, class 1: 0/1
    assert video_metrics(probs[:, :4], torch.tensor([0, 0, 0, 1]))["top5"] is None  # C < 5


class MeanProbe(Head):
    """A fixed 'head': logits = 10 x the clip's mean feature (first 4 channels)."""

    inputs = ["final.cls"]

    def forward(self, feats):
        return 10 * feats["final.cls"].mean(dim=1)[:, :4]


def test_evaluation_averages_the_softmax_over_every_view_and_clip(small_store):
    fs = FeatureStore(small_store)
    ids = split_ids(fs, 0.0)[0][:6]
    ds = ClipDataset(fs, ids, 4, 1, "eval", ["final.cls"], eval_clips=2)
    loader = EpochLoader(ds, batch_size=5, shuffle=False)
    got = evaluate(MeanProbe(), loader.batches(), ds.labels, 4, device=torch.device("cpu"), bf16=True)
    probs = np.zeros((6, 4))
    for k in range(len(ds)):  # by hand: every (view, clip) of each video
        i, view, rows = ds.clip(k)
        x = fs.read(ids[i], view, rows, ["final.cls"], dtype=np.float16)["final.cls"].astype(np.float32)
        probs[i] += torch.softmax(10 * torch.from_numpy(x).mean(0)[:4], 0).numpy() / 4  # 2 views x 2 clips
    want = video_metrics(torch.from_numpy(probs), torch.from_numpy(ds.labels))
    assert len(ds) == 24 and got["clips"] == 24 and got["videos"] == 6
    assert got["top1"] == want["top1"] and got["mean_class_acc"] == want["mean_class_acc"]


# ----------------------------------------------------------------------------------------- resume


def test_stopping_and_resuming_gives_the_uninterrupted_run(tmp_path, small_store):
    options = {
        "head": {"name": "vivit_fe", "options": {"depth": 1, "dropout": 0.2}},  # dropout: RNG state matters
        "optim": {"epochs": 4},
    }
    full = run_train(make_cfg(tmp_path / "full", small_store, **options))
    first = run_train(make_cfg(tmp_path / "cut", small_store, **options), stop_after=2)
    assert first["epochs_done"] == 2
    resumed = run_train(make_cfg(tmp_path / "cut", small_store, **options))
    assert without_timing(resumed) == without_timing(full)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lines_full, lines_cut = (
        read_jsonl(tmp_path / "full" / "metrics.jsonl"),
        read_jsonl(tmp_path / "cut" / "metrics.jsonl"),
    )
    assert [without_timing(r) for r in lines_full[1:]] == [without_timing(r) for r in lines_cut[1:]]
    again = run_train(make_cfg(tmp_path / "cut", small_store, **options))  # finished: nothing more to do
    assert (
        without_timing(again) == without_timing(full)
        and len(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == 9
    )


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, small_store):
    optim = {"epochs": 1, "warmup_epochs": 0.0}
    big = run_train(
        make_cfg(tmp_path / "big", small_store, data={"val_fraction": 0.0, "batch_size": 12}, optim=optim)
    )
    small = run_train(
        make_cfg(
            tmp_path / "acc",
            small_store,
            data={"val_fraction": 0.0, "batch_size": 4},
            optim=optim | {"accum_steps": 3},
        )
    )
    assert big["step"] == small["step"] == 2  # 16 videos: groups of 12 + 4 clips
    a = torch.load(tmp_path / "big" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "acc" / "last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert not torch.equal(a["classifier.weight"], torch.zeros_like(a["classifier.weight"]))


# ----------------------------------------------------------------------------------------- outputs


def test_outputs_metrics_curves_and_checkpoint(tmp_path, small_store):
    out = tmp_path / "run"
    result = run_train(make_cfg(out, small_store, optim={"epochs": 3}, run={"plots": True, "eval_every": 2}))
    lines = read_jsonl(out / "metrics.jsonl")
    assert lines[0]["type"] == "config" and lines[0]["config"]["optim"]["epochs"] == 3
    assert lines[0]["head"]["name"] == "linear" and lines[0]["store"]["classes"][0] == "axis0+"
    kinds = [(r["type"], r["epoch"]) for r in lines[1:]]
    assert kinds == [("epoch", 1), ("epoch", 2), ("eval", 2), ("epoch", 3), ("eval", 3)]  # last epoch always
    assert all(r["seconds"] > 0 and r["peak_mem_mb"] > 0 for r in lines[1:] if r["type"] == "epoch")
    assert {"top1", "mean_class_acc", "val_loss", "videos"} <= set(lines[-1]) and lines[-1]["top5"] is None
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(out / "last.pt", weights_only=True)  # plain types only: loads safely
    assert ckpt["epoch"] == 3 and ckpt["step"] == result["step"] and ckpt["head"]["inputs"] == ["final.cls"]
    assert {"model", "optimizer", "rng", "config", "store", "metrics"} <= set(ckpt)
    assert ckpt["store"]["fingerprint"] == FeatureStore(small_store).spec.fingerprint
    assert (out / "best.pt").exists() and result["best_top1"] == max(
        r["top1"] for r in lines if r["type"] == "eval"
    )


# ----------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict[str, Any], results: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    result = run_train(from_dict(TrainConfig, cfg_dict))
    Path(results, f"rank{rank}.json").write_text(json.dumps(result, default=str))


def test_two_process_ddp_on_cpu_trains(tmp_path, small_store):
    cfg = make_cfg(tmp_path / "ddp", small_store, optim={"epochs": 3, "lr": 1e-2}, run={"device": "cpu"})
    import torch._dynamo  # noqa: F401 - imported once here, inherited by the forked workers (AdamW needs it)

    mp.start_processes(
        _ddp_worker,
        args=(2, _free_port(), to_dict(cfg), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )  # fork: the workers inherit the imported modules (fast)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert (
        ranks[0]["top1"] == ranks[1]["top1"] and ranks[0]["train_loss"] == ranks[1]["train_loss"]
    )  # all-reduced
    lines = read_jsonl(tmp_path / "ddp" / "metrics.jsonl")
    assert lines[0]["world_size"] == 2 and len(lines) == 1 + 3 + 3  # written once (rank 0), not twice
    epochs = [r for r in lines if r["type"] == "epoch"]
    n_train = len(split_ids(FeatureStore(small_store), 0.25)[0])
    assert all(r["train_clips"] == n_train // 2 * 2 for r in epochs)  # both shares counted
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]


# ----------------------------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_asking_for_cuda_without_one_is_refused(tmp_path, small_store):
    with pytest.raises(ConfigError, match=r"run.device='cuda' but no CUDA device is available"):
        run_train(make_cfg(tmp_path, small_store, run={"device": "cuda"}))


@pytest.mark.gpu
def test_cuda_bf16_training_resumes_exactly(tmp_path, small_store):
    options = {"head": {"name": "vivit_fe", "options": {"depth": 1}}, "optim": {"epochs": 3}}
    full = run_train(make_cfg(tmp_path / "full", small_store, **options))
    run_train(make_cfg(tmp_path / "cut", small_store, **options), stop_after=1)
    resumed = run_train(make_cfg(tmp_path / "cut", small_store, **options))
    assert full["mem_kind"] == "cuda" and full["peak_mem_mb"] > 0
    for key in ("train_loss", "val_loss", "top1"):  # CUDA kernels may sum in another order: not bit-exact
        assert resumed[key] == pytest.approx(full[key], rel=1e-3), key
