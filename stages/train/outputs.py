"""What a training run writes (rank 0 only): checkpoints with every RNG state, metrics.jsonl, curves.png.

    run.out/
      last.pt        after every epoch: model, optimizer, step, epoch, RNG states (each process), config,
                     head (name, options, frames, classes, inputs), store (fingerprint, backbone, tensors)
      best.pt        a copy of last.pt whenever the validation top-1 improved
      metrics.jsonl  line 1: the resolved config; then one line per epoch and per evaluation
      curves.png     loss and accuracy against epoch
      tensorboard/   with run.tensorboard=true: the same figures as TensorBoard scalars (`pip install
                     tensorboard`; tags epoch/<key> and eval/<key>, at the optimizer step)

Checkpoints hold plain types only, so they load with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

CHECKPOINT_FORMAT = "twostage-train-checkpoint"
CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every RNG a run touches (torch, CUDA, numpy, python), as tensors, lists and tuples."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def gather_rng(world: int) -> list[dict[str, Any]]:
    """Every process's RNG states (index = rank), so a resumed DDP run continues each stream."""
    if world == 1:
        return [rng_state()]
    states: list[Any] = [None] * world
    torch_dist.all_gather_object(states, rng_state())
    return states


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a run killed while saving keeps its previous checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


class MetricsLog:
    """``metrics.jsonl``: the resolved config first, then one line per epoch and per evaluation.

    Resuming after epoch ``resume_epoch`` keeps the lines up to it (a run killed after writing a line but
    before its checkpoint would otherwise log that epoch twice).
    """

    def __init__(
        self, path: Path, header: dict[str, Any], resume_epoch: int | None, enabled: bool,
        tensorboard: Any = None,
    ) -> None:  # fmt: skip
        self.path, self.enabled, self.tensorboard = path, enabled, tensorboard
        self.records: list[dict[str, Any]] = []
        if resume_epoch is not None and path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            self.records = [r for r in lines[1:] if r.get("epoch", 0) <= resume_epoch]
        if enabled:
            path.write_text("".join(json.dumps(r, default=str) + "\n" for r in [header, *self.records]))

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        if self.tensorboard is not None:  # the same numbers, as scalars at the record's optimizer step
            for key, value in record.items():
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if number and key not in ("epoch", "step"):
                    self.tensorboard.add_scalar(f"{record['type']}/{key}", value, global_step=record["step"])
            self.tensorboard.flush()


def tensorboard_writer(folder: Path, purge_step: int | None) -> Any:
    """A ``SummaryWriter`` on ``folder``; a resumed run (``purge_step``: its step + 1) drops the events
    the interrupted run wrote after its checkpoint, as metrics.jsonl drops those lines.

    Raises:
        ConfigError: the tensorboard package is not installed.
    """
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        from stages.core.errors import ConfigError

        raise ConfigError("run.tensorboard=true needs the tensorboard package: pip install tensorboard "
                          "(or set run.tensorboard=false; metrics.jsonl holds the same figures)")  # fmt: skip
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder), purge_step=purge_step)


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy against epoch, train and validation, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [r for r in records if r.get("type") == "epoch"]
    val = [r for r in records if r.get("type") == "eval" and r.get("top1") is not None]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["epoch"] for r in train], [r["train_loss"] for r in train], "o-", label="train")
    ax_loss.plot([r["epoch"] for r in val], [r["val_loss"] for r in val], "s-", label="val")
    ax_acc.plot(
        [r["epoch"] for r in train], [r["train_top1"] for r in train], "o-", label="train top-1 (clips)"
    )
    ax_acc.plot([r["epoch"] for r in val], [r["top1"] for r in val], "s-", label="val top-1 (videos)")
    ax_acc.set_ylim(0.0, 1.0)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory: CUDA allocated since the epoch began, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return {"peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "mem_kind": "cuda"}
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"peak_mem_mb": round(rss_mb, 1), "mem_kind": "cpu_rss"}
