"""The stage-two training loop, readable top to bottom (nanoGPT style).

    setup: model on device (DDP-wrapped under torchrun) -> AdamW -> loaders -> schedule
    resume: model, optimizer, step, every process's RNG states from run.out/last.pt
    for each epoch:
      for each micro-batch: autocast forward -> cross-entropy / group size -> backward
        every accum_steps micro-batches: lr_at(step) -> clip gradients -> AdamW step
      every eval_every epochs (and the last): softmax averaged over all views of each video
      metrics.jsonl line(s), last.pt (+ best.pt), curves.png            [rank 0 only]

The data pipeline draws nothing from the global RNGs and the schedule is a pure function of the step,
so a run resumed from ``last.pt`` continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from stages.core.config import to_dict
from stages.train import outputs
from stages.train.config import TrainConfig
from stages.train.data import ClipDataset, make_loader
from stages.train.evaluate import evaluate
from stages.train.runtime import Dist, autocast, to_device


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from ``lr / warmup_steps`` up to ``lr``, then cosine to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def make_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float], fused: bool = False
) -> torch.optim.AdamW:
    """AdamW; matrices (and embeddings) decay, biases, norms and other 1-D parameters do not (as nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass
class Session:
    """What one run holds: the (maybe DDP-wrapped) model, optimizer, loaders and schedule."""

    model: nn.Module
    raw: nn.Module  # the unwrapped head: what is saved and evaluated
    optimizer: torch.optim.AdamW
    loader: DataLoader
    val_loader: DataLoader | None
    steps_per_epoch: int
    lr_fn: Callable[[int], float]


def start_session(
    model: nn.Module, train_set: ClipDataset, val_set: ClipDataset | None, cfg: TrainConfig, dist: Dist,
    device: torch.device,
) -> Session:  # fmt: skip
    raw = model.to(device)
    if dist.active:
        model = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None
        )
    o, d = cfg.optim, cfg.data
    optimizer = make_optimizer(
        raw, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas, fused=device.type == "cuda"
    )
    common = {"workers": d.workers, "seed": cfg.run.seed, "rank": dist.rank, "world": dist.world,
              "pin_memory": device.type == "cuda"}  # fmt: skip
    loader = make_loader(train_set, batch_size=d.batch_size, shuffle=True, **common)
    val_loader = None
    if val_set is not None:
        val_loader = make_loader(
            val_set, batch_size=d.eval_batch_size or 2 * d.batch_size, shuffle=False, **common
        )
    steps_per_epoch = math.ceil(len(loader) / o.accum_steps)
    total, warmup = o.epochs * steps_per_epoch, round(o.warmup_epochs * steps_per_epoch)

    def lr_fn(step: int) -> float:
        return lr_at(step, lr=o.lr, min_lr=o.min_lr, warmup_steps=warmup, total_steps=total)

    return Session(model, raw, optimizer, loader, val_loader, steps_per_epoch, lr_fn)


def train_epoch(
    s: Session, *, step: int, cfg: TrainConfig, device: torch.device, dist: Dist, log: Callable[[str], None]
) -> tuple[int, dict[str, Any]]:
    """One pass over the training loader; returns the new optimizer step and the epoch's figures."""
    s.model.train()
    accum, n = cfg.optim.accum_steps, len(s.loader)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct: no sync per step
    clips = 0
    t0 = time.perf_counter()
    for i, batch in enumerate(s.loader):
        feats, labels = to_device(batch, device)
        group_size = min(accum, n - (i // accum) * accum)  # the last group of an epoch may be short
        boundary = (i + 1) % accum == 0 or i == n - 1
        sync = contextlib.nullcontext() if boundary or not dist.active else s.model.no_sync()
        with sync:
            with autocast(device, cfg.run.bf16):
                logits = s.model(feats)  # [B, C]
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.optim.label_smoothing)
            (loss / group_size).backward()
        hits = (logits.argmax(dim=1) == labels).sum()
        totals += torch.stack([loss.detach().double() * len(labels), hits.double()])
        clips += len(labels)
        if boundary:
            lr = s.lr_fn(step)
            for group in s.optimizer.param_groups:
                group["lr"] = lr
            if cfg.optim.clip_grad is not None:
                nn.utils.clip_grad_norm_(s.model.parameters(), cfg.optim.clip_grad)
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % cfg.run.log_every == 0:
                total = cfg.optim.epochs * s.steps_per_epoch
                log(f"  step {step}/{total}  loss {loss.item():.4f}  lr {lr:.3e}")
    summed = torch.cat([totals, totals.new_tensor([clips])])
    if dist.active:
        torch_dist.all_reduce(summed)
    seconds = time.perf_counter() - t0
    loss_sum, correct, clips = summed.tolist()
    return step, {"train_loss": loss_sum / max(clips, 1), "train_top1": correct / max(clips, 1),
                  "train_clips": int(clips), "seconds": round(seconds, 3),
                  "clips_per_s": round(clips / max(seconds, 1e-9), 1)}  # fmt: skip


def train(
    model: nn.Module,
    train_set: ClipDataset,
    val_set: ClipDataset | None,
    *,
    cfg: TrainConfig,
    meta: dict[str, Any],
    dist: Dist,
    device: torch.device,
    resume: dict[str, Any] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``train_set``, evaluate on ``val_set``; checkpoints and metrics go to ``run.out``.

    ``meta`` (head and store description) goes into the metrics header and every checkpoint; ``resume``
    is a loaded checkpoint to continue from; ``stop_after`` ends the run after that many epochs in all,
    as an interruption would (tests). Returns the last epoch's figures plus the last evaluation's.
    """
    out, log = Path(cfg.run.out), (print if dist.main else _quiet)
    seed_everything(cfg.run.seed + dist.rank)  # dropout differs per process; the init was seeded before
    s = start_session(model, train_set, val_set, cfg, dist, device)
    epoch, step, best, last = 0, 0, None, {}
    if resume is not None:
        s.raw.load_state_dict(resume["model"])
        s.optimizer.load_state_dict(resume["optimizer"])
        epoch, step, best, last = resume["epoch"], resume["step"], resume["best_top1"], resume["metrics"]
        outputs.set_rng_state(resume["rng"][dist.rank if dist.rank < len(resume["rng"]) else 0])
        log(f"resuming {out / 'last.pt'} after epoch {epoch} (step {step})")
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in s.raw.parameters())
    header = {"type": "config", "config": to_dict(cfg), **meta, "world_size": dist.world,
              "parameters": n_params, "steps_per_epoch": s.steps_per_epoch}  # fmt: skip
    metrics = outputs.MetricsLog(out / "metrics.jsonl", header, epoch if resume else None, dist.main)
    while epoch < cfg.optim.epochs and (stop_after is None or epoch < stop_after):
        train_set.set_epoch(epoch)
        s.loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step, figures = train_epoch(s, step=step, cfg=cfg, device=device, dist=dist, log=log)
        epoch += 1
        memory = outputs.peak_memory(device)
        last = {"type": "epoch", "epoch": epoch, "step": step, "lr": s.lr_fn(step - 1), **figures, **memory}
        metrics.add(last)
        log(_epoch_line(last, cfg.optim.epochs))
        result = None
        if val_set is not None and (epoch % cfg.run.eval_every == 0 or epoch == cfg.optim.epochs):
            result = evaluate(s.raw, s.val_loader, val_set.labels, meta["head"]["num_classes"],  # type: ignore[arg-type]
                              device=device, bf16=cfg.run.bf16, dist=dist)  # fmt: skip
            metrics.add({"type": "eval", "epoch": epoch, "step": step, **result})
            log(_eval_line(result))
            last |= result
        improved = result is not None and (best is None or result["top1"] > best)
        best = result["top1"] if improved else best  # type: ignore[index]
        payload = {"format": outputs.CHECKPOINT_FORMAT, "version": outputs.CHECKPOINT_VERSION,
                   "epoch": epoch, "step": step, "best_top1": best, "config": to_dict(cfg), "metrics": last,
                   "rng": outputs.gather_rng(dist.world), **meta}  # fmt: skip
        if dist.main:
            write_outputs(s, payload, out, improved, metrics.records if cfg.run.plots else None)
    return last | {"best_top1": best, "epochs_done": epoch}


def write_outputs(
    s: Session, payload: dict[str, Any], out: Path, improved: bool, records: list[dict[str, Any]] | None
) -> None:
    """last.pt (with model and optimizer), best.pt when top-1 improved, curves.png."""
    state = {"model": s.raw.state_dict(), "optimizer": s.optimizer.state_dict()}
    outputs.save_checkpoint(out / "last.pt", payload | state)
    if improved:
        shutil.copyfile(out / "last.pt", out / "best.pt")
    if records is not None:
        outputs.plot_curves(records, out / "curves.png")


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    return (f"epoch {r['epoch']}/{epochs}  loss {r['train_loss']:.4f}  top1 {r['train_top1']:.3f}  "
            f"{r['seconds']:.1f} s  {r['clips_per_s']} clips/s  peak {r['peak_mem_mb']} MB")  # fmt: skip


def _eval_line(r: dict[str, Any]) -> str:
    return (f"  eval: top1 {r['top1']:.3f}  mean class acc {r['mean_class_acc']:.3f}  "
            f"loss {r['val_loss']:.4f}  ({r['videos']} videos, {r['clips']} clips)")  # fmt: skip


def _quiet(_message: str) -> None:
    pass
