"""float16 autocast with loss scaling (``run.fp16``): skipped steps counted, the scaler in checkpoints (exact
resume), and the scaler-disabled path identical to a plain AdamW loop, bit for bit."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import CheckpointError, ConfigError
from stages.train.loop import LoopSettings, Step, cosine_schedule, fit, make_optimizer, param_groups
from stages.train.runtime import Dist
from stages.train.stage import run_train
from tests.stages.train.conftest import make_cfg

CPU = torch.device("cpu")


class Batches:
    """8 fixed batches of 4 samples [4, 8] with labels in 0..2; the same every epoch."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, 8, generator=g)
        self.y = torch.randint(0, 3, (n, 4), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, epoch: int, start: int = 0):
        for i in range(start, len(self.x)):
            yield self.x[i], self.y[i]


def boosted_step(boost: float):
    """Cross-entropy x ``boost``: large enough that fp16 gradients overflow at the initial loss scale."""

    def step(model: nn.Module, batch: Any, state: Any) -> tuple[Step, Any]:
        x, y = batch
        logits = model(x)  # [4, 3]
        return Step(F.cross_entropy(logits.float(), y) * boost, logits, y), state

    return step


def train(
    out: Path,
    *,
    fp16: bool,
    boost: float = 1.0,
    stop_after: int | None = None,
    resume: dict[str, Any] | None = None,
    clip_grad: float | None = 1.0,
) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    optimizer = make_optimizer(param_groups(list(model.named_parameters()), lr=1e-2, weight_decay=0.05),
                               betas=(0.9, 0.999))  # fmt: skip
    settings = LoopSettings(out=str(out), epochs=2, fp16=fp16, plots=False, clip_grad=clip_grad)
    result = fit(model, data=Batches(), optimizer=optimizer, schedule=cosine_schedule(2, 16),
                 step_fn=boosted_step(boost), evaluate=None, settings=settings, meta={}, dist=Dist(),
                 device=CPU, resume=resume, stop_after=stop_after)  # fmt: skip
    return model, result


def test_overflowing_fp16_steps_are_skipped_counted_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="stages.train.loop"):
        _, result = train(tmp_path, fp16=True, boost=100.0)
    assert 0 < result["skipped_steps"] < 16 and result["loss_scale"] < 65536.0
    assert any("float16 gradients overflowed" in r.getMessage() for r in caplog.records)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] == result["loss_scale"]


def test_fp16_resume_restores_the_loss_scaler_exactly(tmp_path):
    full, _ = train(tmp_path / "full", fp16=True, boost=100.0)
    train(tmp_path / "cut", fp16=True, boost=100.0, stop_after=1)
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] < 65536.0  # the first epoch lowered it: the state matters
    resumed, _ = train(tmp_path / "cut", fp16=True, boost=100.0, resume=copy.deepcopy(ckpt))
    assert torch.equal(full.weight, resumed.weight) and torch.equal(full.bias, resumed.bias)
    without = {k: v for k, v in ckpt.items() if k != "scaler"}  # a resume that forgot the scaler drifts
    forgot, _ = train(tmp_path / "forgot", fp16=True, boost=100.0, resume=without)
    assert not torch.equal(full.weight, forgot.weight)


@pytest.mark.parametrize("clip_grad", [1.0, None])
def test_scaler_disabled_path_is_a_plain_adamw_loop_bit_for_bit(tmp_path, clip_grad):
    model, result = train(tmp_path, fp16=False, clip_grad=clip_grad)
    assert "skipped_steps" not in result and "loss_scale" not in result
    assert torch.load(tmp_path / "last.pt", weights_only=True)["scaler"] == {}
    torch.manual_seed(0)
    ref = nn.Linear(8, 3)  # what the loop did before loss scaling existed
    opt = make_optimizer(param_groups(list(ref.named_parameters()), lr=1e-2, weight_decay=0.05),
                         betas=(0.9, 0.999))  # fmt: skip
    schedule, step, data = cosine_schedule(2, 16), 0, Batches()
    for epoch in range(2):
        for batch in data.batches(epoch):
            out, _ = boosted_step(1.0)(ref, batch, None)
            out.loss.backward()
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * schedule(step)
            if clip_grad is not None:
                nn.utils.clip_grad_norm_(ref.parameters(), clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
    assert torch.equal(model.weight, ref.weight) and torch.equal(model.bias, ref.bias)


def test_fp16_head_training_from_a_store_records_scaler_and_refuses_a_bf16_resume(tmp_path, store_factory):
    store = store_factory("fp16", videos=8, rows=8)
    options = {"head": {"name": "vivit_fe", "options": {"depth": 1}}, "optim": {"epochs": 1}}
    result = run_train(make_cfg(tmp_path, store, run={"fp16": True}, **options))
    assert result["skipped_steps"] >= 0 and result["loss_scale"] > 0 and result["top1"] is not None
    assert "scale" in torch.load(tmp_path / "last.pt", weights_only=True)["scaler"]
    with pytest.raises(ConfigError, match=r"run.fp16"):
        run_train(make_cfg(tmp_path, store, **options, run={"fp16": "maybe"}))
    with pytest.raises(CheckpointError, match=r"another config \(run.fp16: True -> False\)"):
        run_train(make_cfg(tmp_path, store, **options))


@pytest.mark.gpu
def test_cuda_fp16_training_resumes_exactly_and_the_backbone_runs_in_float16(tmp_path, store_factory):
    store = store_factory("fp16", videos=8, rows=8)
    options = {"head": {"name": "vivit_fe", "options": {"depth": 1}}, "optim": {"epochs": 3}}
    run = {"fp16": True, "device": "cuda"}
    full = run_train(make_cfg(tmp_path / "full", store, run=run, **options))
    run_train(make_cfg(tmp_path / "cut", store, run=run, **options), stop_after=1)
    resumed = run_train(make_cfg(tmp_path / "cut", store, run=run, **options))
    assert full["mem_kind"] == "cuda" and resumed["loss_scale"] == full["loss_scale"]
    for key in ("train_loss", "val_loss"):  # CUDA kernels may sum in another order: not bit-exact
        assert resumed[key] == pytest.approx(full[key], rel=1e-3), key
    from stages.models import TensorRequest, build_backbone

    bb = build_backbone("test_openclip_vit", device="cuda")
    s = bb.spec["input_size"]
    got = bb.forward_tensors(torch.randn(2, 3, s, s), [TensorRequest("b1", "q")], fp16=True)
    assert got["b1.q"].dtype == torch.float16  # as test_cuda_bf16_autocast sees bfloat16
