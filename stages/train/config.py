"""Typed config of stage two (``python -m stages.train CONFIG key=value ...``).

Four sections: ``data`` (which store, which clips), ``head`` (registry name + builder options),
``optim`` (AdamW, schedule, clipping, accumulation) and ``run`` (output folder, seed, device, resume).
Every key has a default (``data.store`` is stage one's default store path); each says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def check_cadence(eval_every: int, log_every: int, checkpoint_every: int) -> None:
    """``run.eval_every``, ``run.log_every`` and ``run.checkpoint_every`` of a training loop, checked."""
    if eval_every < 1 or log_every < 1 or checkpoint_every < 0:
        raise ValueError(
            f"need eval_every >= 1, log_every >= 1, checkpoint_every >= 0, got {eval_every}, {log_every}, "
            f"{checkpoint_every}"
        )


@dataclass
class DataConfig:
    store: str = ""  # the feature store stage one wrote (path or fsspec URL)
    val_store: str | None = None  # a separate store to evaluate on; None = split val_fraction off `store`
    val_fraction: float = 0.1  # share of `store` held out (stable hash of the video id) when no val_store
    frames: int = 8  # T, frames per clip the head sees
    stride: int = 1  # stored rows between clip frames (8 stored rows: T=8 stride 1, T=4 stride 2)
    views: Literal["cycle", "random", "first"] = "cycle"  # train view per epoch: cycle = another each epoch
    jitter: bool = True  # train clips start at a random row when a view holds more rows than the clip spans
    token_dropout: float = 0.0  # train-time probability of zeroing a patch token (CLS kept): regulariser
    eval_clips: int = 1  # clips per stored view at eval, spread evenly (>1 for long dense views)
    short_videos: Literal["refuse", "pad"] = "refuse"  # a view shorter than a clip: refuse, or pad it
    integrity: Literal["check", "skip", "off"] = "check"  # checksum each video on first read: stop / skip it
    stream_by: Literal["video", "source"] = "video"  # memory heads: reset per video, or per source (segments)
    # what the head predicts: [] = the store's label; [verb, noun] = one classifier per target the videos
    # carry (source columns label:<name>), [labels] = multi-label (sigmoid, mAP); `label` = the label itself
    targets: list[str] = field(default_factory=list)
    batch_size: int = 32  # clips per step and process; small heads train well at 32-64
    eval_batch_size: int | None = None  # None = 2 x batch_size (no gradients kept at eval)
    workers: int = 2  # loader processes per training process; store reads overlap the step

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("store is required: the feature store stage one wrote (data.store=runs/x.zarr)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.token_dropout < 1.0:
            raise ValueError(f"token_dropout must be in [0, 1), got {self.token_dropout}")
        for name in ("frames", "stride", "eval_clips", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.targets, list) or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"targets must be a list of names like [verb, noun], got {self.targets!r}")
        if self.workers < 0 or (self.eval_batch_size is not None and self.eval_batch_size < 1):
            raise ValueError(
                f"need workers >= 0 and eval_batch_size >= 1, got {self.workers}, {self.eval_batch_size}"
            )


@dataclass
class HeadConfig:
    name: str = "linear"  # a registered head (`twostage --list-heads`); linear is the baseline
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of the head's builder
    init_from: str | None = None  # a stage-two checkpoint of this head to start from (vivit_fe: any T)


@dataclass
class OptimConfig:
    lr: float = 3e-4  # AdamW peak learning rate for light heads over frozen features
    min_lr: float = 0.0  # cosine floor
    weight_decay: float = 0.05  # AdamW decay on matrices only (EVL and ViViT recipes use 0.05)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults
    epochs: int = 10  # enough for a head on a small store; scale up for large data sets
    warmup_epochs: float = 1.0  # linear warmup, then cosine to min_lr
    clip_grad: float | None = 1.0  # max global gradient norm; None = no clipping
    accum_steps: int = 1  # micro-batches per optimizer step (effective batch = batch_size x this x GPUs)
    label_smoothing: float = 0.0  # cross-entropy smoothing; 0.1 helps large-class data sets

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.epochs < 1 or self.accum_steps < 1 or self.warmup_epochs < 0:
            raise ValueError(
                f"need epochs >= 1, accum_steps >= 1, warmup_epochs >= 0, got "
                f"{self.epochs}, {self.accum_steps}, {self.warmup_epochs}"
            )
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 or null, got {self.clip_grad}")
        if not 0.0 <= self.label_smoothing < 1.0 or self.weight_decay < 0:
            raise ValueError(
                f"need 0 <= label_smoothing < 1 and weight_decay >= 0, got "
                f"{self.label_smoothing}, {self.weight_decay}"
            )


@dataclass
class RunConfig:
    out: str = "runs/train"  # checkpoints, metrics.jsonl and curves.png go here
    seed: int = 0  # seeds the head's init, dropout, clip sampling and shuffling
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    device: str = "auto"  # auto = cuda when available, else cpu
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU, where fp32 is faster and exact)
    fp16: bool = False  # float16 autocast + loss scaling in place of bf16 (T4/V100 lack bf16); eval in fp32
    allow_incomplete: bool = False  # train on a store stage one has not finished (only its committed videos)
    resume: bool = True  # continue from out/last.pt when it exists (same config), else start anew
    log_every: int = 50  # optimizer steps between progress lines (logged; `twostage --quiet` hides them)
    progress: bool = False  # a progress bar over epochs on stderr (the quickstart turns it on)
    plots: bool = True  # write curves.png (loss and accuracy) after every epoch
    tensorboard: bool = False  # also TensorBoard scalars in out/tensorboard (needs: pip install tensorboard)
    checkpoint_every: int = 0  # also save last.pt every N optimizer steps (long epochs); 0 = epoch ends only

    def __post_init__(self) -> None:
        check_cadence(self.eval_every, self.log_every, self.checkpoint_every)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(store="runs/features.zarr"))
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Keys that may change between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = ("run.resume", "run.log_every", "run.progress", "run.plots", "run.tensorboard",
                     "run.device", "run.out", "run.checkpoint_every", "run.allow_incomplete", "data.workers",
                     "data.eval_batch_size", "data.store", "data.val_store")  # fmt: skip
