"""End-to-end runs on tiny videos: shapes change at the scheduled iterations without rebuilding anything,
a run killed mid-cycle resumes to exactly the uninterrupted one, gradients reach what is unfrozen only,
the chain back to the cheap path (extraction with the fine-tuned backbone, vivit_fe on more frames), and
bad inputs refused before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from stages.core.errors import CheckpointError, ConfigError
from stages.e2e import data as e2e_data
from stages.e2e.model import E2EModel
from stages.e2e.stage import make_plan, prepare, run_e2e
from tests.stages.e2e.conftest import make_cfg


class Killed(Exception):
    """Stands for a SIGKILL between two batches."""


def without_timing(r: dict[str, Any]) -> dict[str, Any]:
    drop = ("seconds", "clips_per_s", "peak_mem_mb", "eval_seconds", "out")
    return {k: v for k, v in r.items() if k not in drop}


def record_shapes(monkeypatch) -> list[tuple[int, ...]]:
    """Every training input's shape [B, T, 3, S, S], in order."""
    seen: list[tuple[int, ...]] = []
    forward = E2EModel.forward

    def spy(self, feats):
        if self.training:
            seen.append(tuple(feats["pixels"].shape))
        return forward(self, feats)

    monkeypatch.setattr(E2EModel, "forward", spy)
    return seen


def expected_shapes(plan, videos: int) -> list[tuple[int, ...]]:
    out = []
    for epoch in plan.epochs:
        for _, size, crop in e2e_data.epoch_batches(epoch, videos):
            out.append((size, epoch.frames, 3, crop, crop))
    return out


def test_a_run_changes_shapes_at_the_scheduled_iterations(tmp_path, e2e_videos, monkeypatch):
    cfg = make_cfg(tmp_path, e2e_videos, data={"temporal_views": 2})
    seen = record_shapes(monkeypatch)
    models = []
    monkeypatch.setattr(E2EModel, "__init__", _spy_init(E2EModel.__init__, models))
    result = run_e2e(cfg)
    p = prepare(cfg, torch.device("cpu"))
    assert seen == expected_shapes(p.plan, len(p.videos.train))
    assert {s[1] for s in seen} == {2, 4, 8} and {s[3] for s in seen} == {16, 24, 32}  # 23 px -> 24 (patch 8)
    assert len(models) == 2  # one model for the run (the second: prepare above), never rebuilt
    assert result["epochs_done"] == len(p.plan.epochs) == 6 and result["top1"] is not None
    assert result["clips"] == 2 * result["videos"] == 2 * len(p.videos.val)  # 2 views averaged per video


def _spy_init(init, models):
    def spy(self, *args, **kwargs):
        models.append(self)
        init(self, *args, **kwargs)

    return spy


def test_stopping_and_resuming_mid_cycle_gives_the_uninterrupted_run(tmp_path, e2e_videos, monkeypatch):
    run = {"checkpoint_every": 1, "eval_every": 2}
    full = run_e2e(make_cfg(tmp_path / "full", e2e_videos, run=run))
    batches = e2e_data.ScheduledBatches.batches

    def dies(self, epoch, start=0):
        for i, batch in enumerate(batches(self, epoch, start), start=start):
            if (epoch, i) == (3, 1):  # second iteration of a short cycle, inside the second long-cycle shape
                raise Killed
            yield batch

    monkeypatch.setattr(e2e_data.ScheduledBatches, "batches", dies)
    with pytest.raises(Killed):
        run_e2e(make_cfg(tmp_path / "cut", e2e_videos, run=run))
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (3, 1)  # mid-epoch, mid short cycle
    monkeypatch.setattr(e2e_data.ScheduledBatches, "batches", batches)
    resumed = run_e2e(make_cfg(tmp_path / "cut", e2e_videos, run=run))
    assert without_timing(resumed) == without_timing(full)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradients_reach_the_unfrozen_blocks_only(tmp_path, e2e_videos):
    cfg = make_cfg(tmp_path, e2e_videos, backbone={"trainable": 1})
    model = prepare(cfg, torch.device("cpu")).model.train()
    torch.nn.init.normal_(model.head.classifier.weight)  # zero at init: would stop every gradient
    x = torch.randn(2, 4, 3, 24, 24)  # a coarse multigrid shape: fewer frames, smaller crop
    model({"pixels": x}).square().sum().backward()
    visual = model.backbone.model
    blocks = list(visual.transformer.resblocks)
    assert all(p.grad is not None for p in blocks[-1].parameters())
    assert all(p.grad is None and not p.requires_grad for b in blocks[:-1] for p in b.parameters())
    assert visual.positional_embedding.grad is None and visual.conv1.weight.grad is None
    assert all(p.grad is not None for p in model.head.parameters() if p.requires_grad)
    assert model.head.pos_embed.grad[:, 1:].abs().sum() > 0  # through the resized temporal embedding


def test_all_blocks_learn_and_the_position_embedding_gets_gradients_at_a_smaller_crop(tmp_path, e2e_videos):
    model = prepare(make_cfg(tmp_path, e2e_videos), torch.device("cpu")).model.train()
    torch.nn.init.normal_(model.head.classifier.weight)
    model({"pixels": torch.randn(2, 2, 3, 16, 16)}).square().sum().backward()
    assert model.backbone.model.positional_embedding.grad.abs().sum() > 0
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_the_chain_loads_into_extraction_and_into_vivit_fe_on_more_frames(tmp_path, e2e_videos):
    from stages.core.config import load_config
    from stages.extract.config import ExtractConfig
    from stages.extract.stage import run_extract
    from stages.models import TensorRequest, build_backbone
    from stages.models.weights import sha256_file
    from stages.train.stage import run_train
    from store import FeatureStore
    from tests.stages.train.conftest import make_cfg as train_cfg

    cfg = make_cfg(tmp_path / "e2e", e2e_videos, optim={"epochs": 2, "steps": [0, 1]})
    run_e2e(cfg)
    ckpt = tmp_path / "e2e" / "last.pt"
    tuned = torch.load(ckpt, weights_only=True)["model"]
    bb = build_backbone("test_openclip_vit", weights_file=ckpt)  # the fine-tuned ViT, keyed as open_clip's
    assert all(torch.equal(v, tuned[f"backbone.model.{k}"]) for k, v in bb.model.state_dict().items())
    assert bb.spec["sha256"] == sha256_file(ckpt)

    def extract(store: Path, weights: Path | None) -> FeatureStore:
        overrides = [
            f"source={e2e_videos / 'labels.csv'}",
            f"store.path={store}",
            "tensors=[final.cls]",
            "sampling.frames=16",
            "sampling.stride=1",
            "run.progress=false",
            "run.decode_workers=1",
        ]
        overrides += [f"backbone.weights_file={weights}"] if weights else []
        run_extract(
            load_config(ExtractConfig, Path(__file__).parents[3] / "configs/extract/tiny.yaml", overrides)
        )
        return FeatureStore(store)

    store = extract(tmp_path / "tuned.zarr", ckpt)
    assert store.backbone["sha256"] == sha256_file(ckpt) and store.backbone["weights_file"] == str(
        ckpt.resolve()
    )
    frames = torch.randn(1, 3, 32, 32)
    assert torch.allclose(bb.forward_tensors(frames, [TensorRequest("final", "cls")])["final.cls"],
                          build_backbone("test_openclip_vit", weights_file=ckpt).forward_tensors(
                              frames, [TensorRequest("final", "cls")])["final.cls"])  # fmt: skip
    head = {"name": "vivit_fe", "options": {"depth": 1, "dropout": 0.2}, "init_from": str(ckpt)}
    stage_two = train_cfg(tmp_path / "t32", store.path, head=head, data={"frames": 16, "val_fraction": 0.0},
                          optim={"epochs": 1})  # fmt: skip
    run_train(stage_two)
    meta = torch.load(tmp_path / "t32" / "last.pt", weights_only=True)
    assert meta["init_from"]["report"]["interpolated"] == ["pos_embed"]  # 8 e2e frames -> 16
    plain = extract(tmp_path / "plain.zarr", None)  # the backbone before fine-tuning: refused
    with pytest.raises(
        CheckpointError, match="not this checkpoint's fine-tuned ones.*backbone.weights_file="
    ):
        run_train(
            train_cfg(tmp_path / "t_bad", plain.path, head=head, data={"frames": 16}, optim={"epochs": 1})
        )


@pytest.mark.parametrize(
    "sections, match",
    [
        (
            {"head": {"name": "evl", "options": {"layers": 2}}},
            r"head 'evl' reads .*b2.tokens.*cross_frame=false",
        ),
        ({"data": {"crop": 30}}, r"data.crop=30 is not a multiple of the backbone's 8 px patch; use 32"),
        ({"multigrid": {"crop_multiple": 12}}, r"crop_multiple=12 is not a multiple of the 8 px patch"),
    ],
)
def test_bad_input_is_refused_before_training(tmp_path, e2e_videos, sections, match):
    with pytest.raises(ConfigError, match=match):
        run_e2e(make_cfg(tmp_path / "run", e2e_videos, **sections))
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_a_head_that_cannot_take_other_clip_lengths_is_refused(tmp_path, e2e_videos, monkeypatch):
    from stages.train.heads.vivit_fe import ViViTFEHead

    monkeypatch.setattr(ViViTFEHead, "variable_frames", False)  # as a head that cannot resize would say
    with pytest.raises(ConfigError, match=r"cannot take clips of other lengths than the 8 frames.*\[2, 4\]"):
        run_e2e(make_cfg(tmp_path / "run", e2e_videos))
    cfg = make_cfg(tmp_path / "run", e2e_videos, multigrid={"long_cycle": False})  # short cycle only
    assert {e.frames for e in make_plan(cfg, 8).epochs} == {8}


def test_resuming_with_another_config_is_refused(tmp_path, e2e_videos):
    run_e2e(make_cfg(tmp_path, e2e_videos, optim={"epochs": 2, "steps": [0, 1]}))
    with pytest.raises(CheckpointError, match=r"optim.lr: 0.003 -> 0.01"):
        run_e2e(make_cfg(tmp_path, e2e_videos, optim={"epochs": 2, "steps": [0, 1], "lr": 0.01}))


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict[str, Any], results: str) -> None:
    import json
    import os

    from stages.core.config import from_dict
    from stages.e2e.config import E2EConfig

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    torch.set_num_threads(1)
    result = run_e2e(from_dict(E2EConfig, cfg_dict))
    Path(results, f"rank{rank}.json").write_text(json.dumps(result, default=str))


def test_two_process_ddp_on_cpu_splits_the_global_batch(tmp_path, e2e_videos):
    """EVL without cross-frame attention reads block tokens only: the final norm and projection get no
    gradient, which DDP refuses unless they are frozen first (freeze_unreached)."""
    import json
    import socket

    import torch._dynamo  # noqa: F401 - imported once here, inherited by the forked workers (AdamW needs it)
    import torch.multiprocessing as mp

    from stages.core.config import to_dict

    head = {"name": "evl", "options": {"layers": 2, "cross_frame": False, "dropout": 0.0}}
    cfg = make_cfg(tmp_path / "ddp", e2e_videos, head=head, data={"batch_size": 2},
                   optim={"epochs": 2, "steps": [0, 1]}, run={"device": "cpu"})  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, to_dict(cfg), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")  # fmt: skip
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["train_loss"] == ranks[1]["train_loss"] and ranks[0]["top1"] == ranks[1]["top1"]
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["world_size"] == 2
    epochs = [r for r in lines if r["type"] == "epoch"]
    assert all(r["train_clips"] == 24 for r in epochs)  # both processes' shares: every training video once
