"""Where a stage-two process runs: the DDP process group (under ``torchrun``), its device, autocast.

torchrun --nproc_per_node 8 -m stages.train CONFIG   # env RANK, WORLD_SIZE, LOCAL_RANK -> Dist
python -m stages.train CONFIG                        # one process: Dist(rank=0, world=1)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from stages.core.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[tuple[Dist, torch.device]]:
    """``with distributed(cfg.run.device) as (dist, device):`` joins the process group when launched by
    ``torchrun`` (nccl on CUDA, gloo on CPU), picks the device, and leaves the group on the way out if it
    joined it (a caller that joined already keeps it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    owned = torch_dist.is_available() and not torch_dist.is_initialized()
    dev = pick_device(device, local)
    try:
        if world > 1 and not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        yield Dist(rank, world, local), dev
    finally:
        if owned and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when there is one, else the CPU; ``cuda``: this process's GPU.

    Raises:
        ConfigError: a CUDA device asked for on a machine without one.
    """
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)  # under torchrun: one GPU per process
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name!r} but no CUDA device is available; use run.device=auto or cpu")
    return torch.device("cpu" if name == "auto" else name)


def autocast(device: torch.device, bf16: bool, fp16: bool = False) -> contextlib.AbstractContextManager:
    """float16 autocast when ``fp16`` (on any device: GPUs without bf16, T4/V100; the loop scales the loss),
    else bf16 autocast on CUDA; nothing on CPU (fp32 is faster and exact there)."""
    if fp16:
        return torch.autocast(device.type, dtype=torch.float16)
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, Any], device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A collated batch's features (float16 in the loader, float32 here) and labels on ``device``."""
    feats = {k: v.to(device, non_blocking=True).float() for k, v in batch["feats"].items()}  # [B, T, ...]
    return feats, batch["label"].to(device, non_blocking=True)
