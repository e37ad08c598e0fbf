"""The loop takes plain parts: a toy model, data, optimizer groups and a stateful step function, and a
run killed mid-epoch resumes from its last checkpoint to exactly the uninterrupted result."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.train.loop import LoopSettings, Step, cosine_schedule, fit, make_optimizer, param_groups
from stages.train.runtime import Dist

DEVICE = torch.device("cpu")


class Killed(Exception):
    """Stands for a SIGKILL: the run stops between two batches."""


class ToyData:
    """6 batches per epoch of 4 samples, a pure function of (epoch, batch); may die at a given batch."""

    def __init__(self, kill_at: tuple[int, int] | None = None) -> None:
        self.kill_at = kill_at
        self.starts: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return 6

    def batches(self, epoch: int, start: int = 0):
        self.starts.append((epoch, start))
        for b in range(start, 6):
            if (epoch, b) == self.kill_at:
                raise Killed
            g = torch.Generator().manual_seed(1000 * epoch + b)
            x = torch.randn(4, 5, generator=g)
            yield {"x": x, "y": (x[:, 0] > 0).long() + (x[:, 1] > 0).long()}


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.drop = nn.Dropout(0.3)  # the global RNG matters: resume must restore it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.drop(x))


def memory_step(model: nn.Module, batch: dict[str, Any], state: Any) -> tuple[Step, Any]:
    """A stateful step: the input is shifted by a detached running memory of earlier batches."""
    memory = torch.zeros(5) if state is None else state["memory"]
    logits = model(batch["x"] + memory)
    loss = F.cross_entropy(logits, batch["y"])
    new = {"memory": (0.5 * memory + batch["x"].mean(0)).detach(), "seen": (state or {"seen": 0})["seen"] + 1}
    return Step(loss, logits, batch["y"]), new


def run(out, data: ToyData, resume: dict[str, Any] | None = None, checkpoint_every: int = 1):
    torch.manual_seed(0)
    model = Toy()
    groups = param_groups(list(model.named_parameters()), lr=0.05, weight_decay=0.01)
    groups[1]["base_lr"] = 0.01  # groups may learn at their own rates
    optimizer = make_optimizer(groups, betas=(0.9, 0.999))
    settings = LoopSettings(out=str(out), epochs=3, accum_steps=2, plots=False, log_every=1000,
                            checkpoint_every=checkpoint_every)  # fmt: skip
    evaluate = lambda m: {"top1": float(m.lin.weight.sum().item() > 0)}  # noqa: E731
    result = fit(model, data=data, optimizer=optimizer, schedule=cosine_schedule(1, 9), step_fn=memory_step,
                 evaluate=evaluate, settings=settings, meta={"config": {}}, dist=Dist(), device=DEVICE,
                 resume=resume)  # fmt: skip
    return model, result


def test_a_stateful_step_resumes_exactly_after_a_kill_mid_epoch(tmp_path):
    full_model, full = run(tmp_path / "full", ToyData())
    with pytest.raises(Killed):
        run(tmp_path / "cut", ToyData(kill_at=(1, 5)))  # dies in epoch 2, after its 2nd optimizer step
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (1, 4, 5)  # 3 steps in epoch 1, 2 in epoch 2
    assert ckpt["state"]["seen"] == 10  # 6 + 4 batches went through the step function
    data = ToyData()
    model, resumed = run(tmp_path / "cut", data, resume=ckpt)
    assert data.starts[0] == (1, 4)  # the epoch restarted at its 5th batch, not from the start
    for k, v in full_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    drop = ("seconds", "clips_per_s", "peak_mem_mb")
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in full.items() if k not in drop
    }
    final = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert final["state"]["seen"] == 18 and torch.equal(
        final["state"]["memory"],
        torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state"]["memory"],
    )


def test_parameter_groups_follow_the_schedule_from_their_own_base_lr(tmp_path):
    model, _ = run(tmp_path / "lr", ToyData(), checkpoint_every=0)
    ckpt = torch.load(tmp_path / "lr" / "last.pt", weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    factor = cosine_schedule(1, 9)(8)  # the 9th and last step
    assert groups[0]["lr"] == pytest.approx(0.05 * factor) and groups[1]["lr"] == pytest.approx(0.01 * factor)
    assert ckpt["batch"] == 0 and ckpt["partial"] is None  # epoch-end checkpoints only
