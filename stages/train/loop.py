"""The training loop, readable top to bottom (nanoGPT style), for any model that a step function drives.

    fit(model, data, optimizer, schedule, step_fn, evaluate, settings, meta):
      setup: model on device (DDP-wrapped under torchrun)
      resume: model, optimizer, loss scaler, step, epoch and batch position, step state, every RNG state
      for each epoch (from its saved batch on):
        for each micro-batch: autocast: (Step(loss, logits, labels), state) = step_fn(model, batch, state)
          scale(loss / group size).backward()              # scale: x loss scale under fp16, else x 1
          every accum_steps micro-batches: lr = base_lr x schedule(step) per group -> unscale -> clip -> step
            (fp16: a step whose gradients overflowed is skipped and counted; the loss scale halves)
            every checkpoint_every steps: last.pt mid-epoch                          [rank 0 only]
        every eval_every epochs (and the last): evaluate(model)
        metrics.jsonl line(s), last.pt (+ best.pt), curves.png                       [rank 0 only]
      progress lines (resume, steps, epochs, evaluations) go to the ``stages.train.loop`` logger

What a stage hands in is plain: the model, ``data`` (``len(data)`` batches per epoch,
``data.batches(epoch, start)``), an optimizer whose parameter groups carry ``base_lr``, a schedule
``step -> factor``, a step function (batch -> loss, logits, labels; it may carry a state from one step to
the next, e.g. a memory of earlier chunks), an evaluation function and :class:`LoopSettings`. The loop
knows nothing of stores, heads or configs.

The data draw nothing from the global RNGs and the schedule is a pure function of the step, so a run
resumed from ``last.pt`` (saved at an epoch's end or every ``checkpoint_every`` steps) continues exactly
as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from stages.train import outputs
from stages.train.runtime import Dist, autocast

logger = logging.getLogger(__name__)


@dataclass
class Step:
    """What a step function returns: the loss to back-propagate and what the metrics need."""

    loss: torch.Tensor  # scalar, float32
    logits: torch.Tensor  # [B, C]
    labels: torch.Tensor  # [B]


StepFn = Callable[[nn.Module, Any, Any], tuple[Step, Any]]  # (model, batch, state) -> (Step, new state)


class EpochData(Protocol):
    """Training data the loop can restart at any batch."""

    def __len__(self) -> int: ...  # batches in a whole epoch, for this process

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]: ...


@dataclass
class LoopSettings:
    """How the loop runs (plain values; a stage entry point fills them from its config)."""

    out: str  # checkpoints, metrics.jsonl and curves.png go here
    epochs: int
    accum_steps: int = 1  # micro-batches per optimizer step
    clip_grad: float | None = 1.0  # max global gradient norm; None = no clipping
    bf16: bool = True  # bf16 autocast on CUDA
    fp16: bool = False  # float16 autocast with loss scaling instead (GPUs without bf16: T4, V100)
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    log_every: int = 50  # optimizer steps between progress lines
    plots: bool = True  # curves.png after every epoch
    tensorboard: bool = False  # also TensorBoard scalars in out/tensorboard (the metrics.jsonl figures)
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: at epoch ends only)
    progress: bool = False  # a progress bar over epochs on stderr (rank 0), with the last loss and top-1


def cosine_schedule(warmup_steps: int, total_steps: int, floor: float = 0.0) -> Callable[[int], float]:
    """Factor of the base LR: linear warmup from ``1 / warmup_steps`` to 1, then a cosine to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step >= total_steps:
            return floor
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 -> 1
        return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - floor)

    return factor


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from ``lr / warmup_steps`` up to ``lr``, then cosine to ``min_lr`` at ``total_steps``."""
    return lr * cosine_schedule(warmup_steps, total_steps, min_lr / lr)(step)


def param_groups(
    named: list[tuple[str, nn.Parameter]], *, lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Two AdamW groups at ``base_lr=lr``: matrices (and embeddings) decay; biases, norms and other 1-D
    parameters do not (as nanoGPT). Frozen parameters are left out."""
    params = [p for _, p in named if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "base_lr": lr},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "base_lr": lr},
    ]


def make_optimizer(
    groups: list[dict[str, Any]], *, betas: tuple[float, float], fused: bool = False
) -> torch.optim.AdamW:
    """AdamW over parameter groups that each carry their ``base_lr`` (empty groups dropped)."""
    groups = [g | {"lr": g["base_lr"]} for g in groups if g["params"]]
    return torch.optim.AdamW(groups, betas=betas, fused=fused)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass
class _Position:
    """Where a run stands: completed epochs, batches done in the current one, optimizer steps."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def fit(
    model: nn.Module,
    *,
    data: EpochData,
    optimizer: torch.optim.Optimizer,
    schedule: Callable[[int], float],
    step_fn: StepFn,
    evaluate: Callable[[nn.Module], dict[str, Any]] | None,
    settings: LoopSettings,
    meta: dict[str, Any],
    dist: Dist,
    device: torch.device,
    resume: dict[str, Any] | None = None,
    stop_after: int | None = None,
    state: Any = None,
) -> dict[str, Any]:
    """Train ``model`` (already on ``device``) for ``settings.epochs``; returns the last figures.

    ``meta`` (plain values: config, head, store...) goes into the metrics header and every checkpoint;
    ``resume`` is a loaded ``last.pt`` to continue from; ``stop_after`` ends the run after that many
    epochs in all, as an interruption would (tests); ``state`` is the step function's initial state.
    """
    out, log = Path(settings.out), (logger.info if dist.main else logger.debug)  # rank 0 reports progress
    net = model
    if dist.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    run = _Run(model, net, data, optimizer, schedule, step_fn, settings, meta, dist, device, log, out)
    pos, best, last = _Position(), None, {}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if resume.get("scaler"):  # fp16 runs: the loss scale and its growth counter, for an exact resume
            run.scaler.load_state_dict(resume["scaler"])
        pos = _Position(resume["epoch"], resume.get("batch", 0), resume["step"])
        best, last, state = resume["best_top1"], resume["metrics"], resume.get("state", state)
        outputs.set_rng_state(resume["rng"][dist.rank if dist.rank < len(resume["rng"]) else 0])
        where = f"epoch {pos.epoch}" + (f", batch {pos.batch} of epoch {pos.epoch + 1}" if pos.batch else "")
        log(f"resuming {out / 'last.pt'} after {where} (step {pos.step})")
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    header = {"type": "config", **meta, "world_size": dist.world, "parameters": n_params,
              "trainable_parameters": trainable, "steps_per_epoch": run.steps_per_epoch}  # fmt: skip
    board = None
    if settings.tensorboard and dist.main:
        board = outputs.tensorboard_writer(out / "tensorboard", pos.step + 1 if resume is not None else None)
    metrics = outputs.MetricsLog(
        out / "metrics.jsonl", header, pos.epoch if resume else None, dist.main, board
    )
    partial = resume.get("partial") if resume is not None else None
    bar = _progress_bar(settings, dist, pos.epoch)
    while pos.epoch < settings.epochs and (stop_after is None or pos.epoch < stop_after):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        figures, state = run.epoch(pos, state, partial, best)
        partial = None
        pos = _Position(pos.epoch + 1, 0, pos.step)
        memory = outputs.peak_memory(device)
        last = {"type": "epoch", "epoch": pos.epoch, "step": pos.step, "lr": run.lr(pos.step - 1), **figures,
                **memory}  # fmt: skip
        metrics.add(last)
        log(_epoch_line(last, settings.epochs))
        result = None
        if evaluate is not None and (pos.epoch % settings.eval_every == 0 or pos.epoch == settings.epochs):
            result = evaluate(model)
            metrics.add({"type": "eval", "epoch": pos.epoch, "step": pos.step, **result})
            log(_eval_line(result))
            last |= result
        top1 = None if result is None else result.get("top1")
        improved = top1 is not None and (best is None or top1 > best)
        best = top1 if improved else best
        run.save(pos, state, best, last, improved=improved, records=metrics.records)
        if bar is not None:
            bar.set_postfix_str(_bar_text(last, best), refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    if board is not None:
        board.close()
    return last | {"best_top1": best, "epochs_done": pos.epoch, "step": pos.step}


def _progress_bar(settings: LoopSettings, dist: Dist, done: int) -> Any:
    if not (settings.progress and dist.main):
        return None
    from tqdm import tqdm

    return tqdm(total=settings.epochs, initial=done, desc=f"train {Path(settings.out).name}", unit="epoch",
                dynamic_ncols=True, leave=True)  # fmt: skip


def _bar_text(last: dict[str, Any], best: float | None) -> str:
    loss = last.get("train_loss")
    text = "" if loss is None else f"loss {loss:.3f}"
    if best is not None:
        text += f" best top-1 {100 * best:.1f}%"
    return text.strip()


class _Run:
    """One run's moving parts; its methods are the loop's body (one epoch, one checkpoint)."""

    def __init__(
        self, model: nn.Module, net: nn.Module, data: EpochData, optimizer: torch.optim.Optimizer,
        schedule: Callable[[int], float], step_fn: StepFn, settings: LoopSettings, meta: dict[str, Any],
        dist: Dist, device: torch.device, log: Callable[[str], None], out: Path,
    ) -> None:  # fmt: skip
        self.model, self.net, self.data, self.optimizer = model, net, data, optimizer
        self.schedule, self.step_fn, self.settings, self.meta = schedule, step_fn, settings, meta
        self.dist, self.device, self.log, self.out = dist, device, log, out
        self.steps_per_epoch = math.ceil(len(data) / settings.accum_steps)
        # fp16 loss scaling; disabled (bf16, fp32) its scale/unscale/step are the plain calls, bit for bit
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.fp16)

    def lr(self, step: int) -> float:
        """The first group's learning rate at ``step`` (what progress lines and metrics show)."""
        return self.optimizer.param_groups[0]["base_lr"] * self.schedule(step)

    def epoch(
        self, pos: _Position, state: Any, partial: dict[str, Any] | None, best: float | None
    ) -> tuple[dict[str, Any], Any]:
        """One pass over the training data from ``pos.batch`` on; advances ``pos.step`` in place."""
        s, n = self.settings, len(self.data)
        self.net.train()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, clips
        seconds, skipped = 0.0, 0  # skipped: fp16 steps whose gradients overflowed
        if partial is not None:  # resumed mid-epoch: the figures of the batches already done
            totals += torch.tensor(partial["totals"], dtype=torch.float64, device=self.device)
            seconds, skipped = partial["seconds"], partial.get("skipped", 0)
        t0 = time.perf_counter()
        for i, batch in enumerate(self.data.batches(pos.epoch, pos.batch), start=pos.batch):
            group_size = min(s.accum_steps, n - (i // s.accum_steps) * s.accum_steps)  # the last may be short
            boundary = (i + 1) % s.accum_steps == 0 or i == n - 1
            sync = contextlib.nullcontext() if boundary or not self.dist.active else self.net.no_sync()
            with sync:
                with autocast(self.device, s.bf16, s.fp16):
                    out, state = self.step_fn(self.net, batch, state)
                self.scaler.scale(out.loss / group_size).backward()
            hits = (out.logits.detach().argmax(dim=1) == out.labels).sum()
            totals += torch.stack([out.loss.detach().double() * len(out.labels), hits.double(),
                                   totals.new_tensor(len(out.labels))])  # fmt: skip
            if not boundary:
                continue
            lr, applied = self._optimizer_step(pos.step)
            skipped += not applied
            pos.step += 1
            if pos.step % s.log_every == 0:
                total = s.epochs * self.steps_per_epoch
                self.log(f"  step {pos.step}/{total}  loss {out.loss.item():.4f}  lr {lr:.3e}")
            if s.checkpoint_every and pos.step % s.checkpoint_every == 0 and i + 1 < n:
                done = {"totals": totals.tolist(), "seconds": seconds + time.perf_counter() - t0,
                        "skipped": skipped}  # fmt: skip
                self.save(_Position(pos.epoch, i + 1, pos.step), state, best, {}, improved=False,
                          records=None, partial=done)  # fmt: skip
        if self.dist.active:
            torch_dist.all_reduce(totals)
        seconds += time.perf_counter() - t0
        loss_sum, correct, clips = totals.tolist()
        figures = {"train_loss": loss_sum / max(clips, 1), "train_top1": correct / max(clips, 1),
                   "train_clips": int(clips), "seconds": round(seconds, 3),
                   "clips_per_s": round(clips / max(seconds, 1e-9), 1)}  # fmt: skip
        if s.fp16:
            figures |= {"skipped_steps": skipped, "loss_scale": self.scaler.get_scale()}
        return figures, state

    def _optimizer_step(self, step: int) -> tuple[float, bool]:
        """One optimizer step at ``step``'s learning rate; returns the rate and whether the step was
        applied (False: fp16 gradients held inf/NaN, so the scaler skipped it and halved the scale)."""
        factor = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        if self.settings.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients (a no-op when disabled)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.settings.clip_grad)
        self.scaler.step(self.optimizer)  # disabled: optimizer.step()
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        applied = not self.scaler.is_enabled() or self.scaler.get_scale() >= scale
        if not applied:
            logger.info("step %d skipped: float16 gradients overflowed; loss scale %g -> %g", step + 1,
                        scale, self.scaler.get_scale())  # fmt: skip
        return self.optimizer.param_groups[0]["lr"], applied

    def save(
        self, pos: _Position, state: Any, best: float | None, last: dict[str, Any], *, improved: bool,
        records: list[dict[str, Any]] | None, partial: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """last.pt (model, optimizer, loss scaler ({} unless fp16), position, step state, RNG states),
        best.pt, curves.png."""
        rng = outputs.gather_rng(self.dist.world)  # every process takes part under DDP
        if not self.dist.main:
            return
        payload = {"format": outputs.CHECKPOINT_FORMAT, "version": outputs.CHECKPOINT_VERSION,
                   "epoch": pos.epoch, "batch": pos.batch, "step": pos.step, "best_top1": best,
                   "metrics": last, "rng": rng,
                   "state": state, "partial": partial, **self.meta,
                   "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scaler": self.scaler.state_dict()}  # fmt: skip
        outputs.save_checkpoint(self.out / "last.pt", payload)
        if improved:
            shutil.copyfile(self.out / "last.pt", self.out / "best.pt")
        if records is not None and self.settings.plots:
            outputs.plot_curves(records, self.out / "curves.png")


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    line = (f"epoch {r['epoch']}/{epochs}  loss {r['train_loss']:.4f}  top1 {r['train_top1']:.3f}  "
            f"{r['seconds']:.1f} s  {r['clips_per_s']} clips/s  peak {r['peak_mem_mb']} MB")  # fmt: skip
    if "loss_scale" in r:  # fp16 runs
        line += f"  fp16: {r['skipped_steps']} steps skipped, loss scale {r['loss_scale']:g}"
    return line


def _eval_line(r: dict[str, Any]) -> str:
    """The evaluation's figures in one line (whatever the evaluation function returned)."""
    if r.get("top1", 0) is None:
        return f"  eval: no labelled videos ({r.get('clips', 0)} clips)"
    names = {"top1": "top1", "top5": "top5", "mean_class_acc": "mean class acc", "val_loss": "loss"}
    parts = [f"{label} {r[k]:.4f}" for k, label in names.items() if isinstance(r.get(k), (int, float))]
    parts += [f"{k} {v:.4f}" for k, v in r.items() if k not in names and isinstance(v, float)
              and k not in ("eval_seconds",)]  # fmt: skip
    counts = ", ".join(f"{r[k]} {k}" for k in ("videos", "clips") if k in r)
    return "  eval: " + "  ".join(parts) + (f"  ({counts})" if counts else "")
