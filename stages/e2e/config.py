"""Typed config of the end-to-end path (``python -m stages.e2e CONFIG key=value ...``).

Seven sections: ``data`` (videos, clip shape, global batch), ``augment`` (pixel augmentation),
``backbone`` (which ViT, what learns), ``head`` (registry name + options), ``optim`` (two learning
rates, the LR policy in SlowFast's terms), ``multigrid`` (long/short cycles) and ``run``. SlowFast's
names are given beside the keys that mirror them, so a SlowFast schedule carries over number for number.
Every key has a default, each saying why; the schedule is checked as the config loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from stages.e2e import multigrid as mgrid
from stages.train.config import check_cadence


@dataclass
class DataConfig:
    source: str = ""  # videos: csv/jsonl list, class-per-folder tree or webdataset shards (as stage one)
    val_source: str | None = None  # separate evaluation videos; None = hold out val_fraction of `source`
    val_fraction: float = 0.1  # share of `source` held out (stable hash of the video id) without val_source
    classes: list[str] | None = None  # fixed class order; None = classes.txt next to the list, else sorted
    frames: int = 8  # T at the full shape (DATA.NUM_FRAMES): 8 frames, the Gowda et al. short-clip stage
    stride: int = 4  # source frames between clip frames (DATA.SAMPLING_RATE); 8 x 4 spans ~1 s at 30 fps
    crop: int = 224  # S at the full shape (DATA.TRAIN_CROP_SIZE): ViT-B/16's input size
    short_side: int | None = (
        None  # evaluation: short side resized to this, then cropped; None = crop (stage one)
    )
    batch_size: int = (
        16  # global clips per iteration at the full shape (TRAIN.BATCH_SIZE), split over processes
    )
    eval_batch_size: int | None = None  # clips per evaluation batch and process; None = the training share
    temporal_views: int = 1  # evaluation clips per video along time (4 in ViViT's test protocol)
    spatial_views: int = 1  # evaluation crops per clip: 1 = centre, 3 = left/centre/right
    workers: int = 2  # decoding processes per training process: decode binds on small models
    decoder: Literal["auto", "decord", "pyav"] = "auto"  # auto = decord, PyAV when decord fails on a file

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("source is required: the training videos (data.source=data/synth/labels.csv)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction}: expected a share in [0, 1)")
        for name in ("frames", "stride", "crop", "batch_size", "temporal_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        if self.spatial_views not in (1, 3) or self.workers < 0:
            raise ValueError(
                f"spatial_views={self.spatial_views}, workers={self.workers}: expected 1 or 3 views and "
                "workers >= 0"
            )
        if self.short_side is not None and self.short_side < self.crop:
            raise ValueError(
                f"short_side={self.short_side} is below crop={self.crop}; expected >= crop, or null"
            )
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size={self.eval_batch_size}: expected >= 1, or null")


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.08, 1.0)  # random resized crop area share (Inception-style, ViT recipes)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)  # crop aspect ratio w / h (torchvision's)
    flip: float = 0.5  # horizontal flip probability; 0 where left/right is the label (synthetic `direction`)
    color_jitter: float = 0.0  # brightness/contrast/saturation in [1 - j, 1 + j]; off, as SlowFast's Kinetics


@dataclass
class BackboneConfig:
    name: str = (
        "test_openclip_vit"  # a registry name (`twostage --list-backbones`), or open_clip:ARCH / timm:NAME
    )
    pretrained: str | None = None  # pretrained tag; None = the entry's own (test_*: random init)
    weights_file: str | None = None  # local .pt/.safetensors (or an e2e checkpoint), loaded safely
    trainable: str | int = "all"  # "all" blocks, or N: only the last N blocks (and what follows) learn
    random_init: bool = False  # train from scratch (no tag, no file): refused otherwise; test_* are random

    def __post_init__(self) -> None:
        if self.trainable != "all" and not (isinstance(self.trainable, int) and self.trainable >= 1):
            raise ValueError(f"trainable={self.trainable!r}: expected 'all' or a number of last blocks >= 1")


@dataclass
class HeadConfig:
    name: str = "vivit_fe"  # a registered head; vivit_fe takes any frame count (temporal pos-emb resized)
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of the head's builder


@dataclass
class OptimConfig:
    lr: float = 1e-3  # the head's base LR (SOLVER.BASE_LR); AdamW for a light temporal head
    backbone_lr: float | None = 1e-5  # the backbone's base LR; fine-tuning CLIP wants ~100x less; None = lr
    schedule: Literal["steps", "cosine"] = "cosine"  # SOLVER.LR_POLICY (steps = steps_with_relative_lrs)
    steps: list[int] = field(default_factory=lambda: [0])  # SOLVER.STEPS: LR stages in epochs from 0; the
    # long cycle runs once per stage, so it needs at least one boundary after 0
    lr_factors: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.01, 0.001])  # SOLVER.LRS per stage
    epochs: int = 30  # SOLVER.MAX_EPOCH of the baseline; multigrid trains epoch_factor x as many
    warmup_epochs: float = 0.0  # SOLVER.WARMUP_EPOCHS: linear from warmup_start_lr (SlowFast's rule)
    warmup_start_lr: float = 0.0  # SOLVER.WARMUP_START_LR, absolute (the backbone's scales with it)
    min_lr: float = 0.0  # SOLVER.COSINE_END_LR
    weight_decay: float = 0.05  # AdamW decay on matrices only (ViT fine-tuning recipes)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults
    clip_grad: float | None = 1.0  # max global gradient norm; None = no clipping
    accum_steps: int = 1  # micro-batches per optimizer step
    label_smoothing: float = 0.0  # cross-entropy smoothing; 0.1 helps large-class data sets

    def __post_init__(self) -> None:
        if not self.lr > 0 or (self.backbone_lr is not None and not self.backbone_lr > 0):
            raise ValueError(
                f"lr={self.lr}, backbone_lr={self.backbone_lr}: expected > 0 (backbone_lr may be null)"
            )
        if self.accum_steps < 1 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ValueError(
                f"accum_steps={self.accum_steps}, weight_decay={self.weight_decay}, label_smoothing="
                f"{self.label_smoothing}: expected >= 1, >= 0 and in [0, 1)"
            )
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad={self.clip_grad}: expected > 0, or null for no clipping")


@dataclass
class MultigridConfig:
    long_cycle: bool = False  # MULTIGRID.LONG_CYCLE: coarse (t, s) shapes across epochs
    short_cycle: bool = False  # MULTIGRID.SHORT_CYCLE: smaller crops across iterations
    long_factors: list[tuple[float, float]] = field(
        default_factory=lambda: [tuple(f) for f in mgrid.DEFAULT_LONG_FACTORS]
    )  # LONG_CYCLE_FACTORS: [t, s] of data.frames, data.crop; SlowFast's four, ending at the full [1, 1]
    short_factors: tuple[float, float] = mgrid.DEFAULT_SHORT_FACTORS  # SHORT_CYCLE_FACTORS: SlowFast's
    epoch_factor: float = 1.5  # EPOCH_FACTOR: multigrid trains 1.5x the baseline's epochs (the paper's)
    short_relative: Literal["default", "current"] = "default"  # short crops relative to data.crop
    # (SlowFast; degenerates in coarse stages, its #429) or to the current long-cycle crop
    final_short_cycle: bool = True  # keep the short cycle in the final full-shape phase (SlowFast)
    scale_lr: bool = True  # LR x long-cycle batch factor, both policies (SlowFast: steps only)
    crop_multiple: int | None = None  # crops rounded to a multiple of this; None = the backbone's patch


@dataclass
class RunConfig:
    out: str = "runs/e2e"  # checkpoints, metrics.jsonl and curves.png go here
    seed: int = 0  # seeds the head's init, dropout, clip sampling, augmentation and shuffling
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    device: str = "auto"  # auto = cuda when available, else cpu
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU, where fp32 is faster and exact)
    resume: bool = True  # continue from out/last.pt when it exists (same config), else start anew
    log_every: int = 50  # optimizer steps between progress lines on stdout
    plots: bool = True  # write curves.png (loss and accuracy) after every epoch
    checkpoint_every: int = 0  # also save last.pt every N optimizer steps (long epochs); 0 = epoch ends only

    def __post_init__(self) -> None:
        check_cadence(self.eval_every, self.log_every, self.checkpoint_every)


@dataclass
class E2EConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(source="data/synth/labels.csv"))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    multigrid: MultigridConfig = field(default_factory=MultigridConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        found = mgrid.problems(baseline(self), multigrid_settings(self, self.multigrid.crop_multiple or 1))
        if found:
            raise ValueError("; ".join(found))


def baseline(cfg: E2EConfig) -> mgrid.Baseline:
    """The run without multigrid, in the schedule's terms (``optim.lr`` is the LR the table shows)."""
    d, o = cfg.data, cfg.optim
    return mgrid.Baseline(
        frames=d.frames, crop=d.crop, batch=d.batch_size, epochs=o.epochs, lr=o.lr, policy=o.schedule,
        steps=tuple(o.steps), lr_factors=tuple(o.lr_factors), warmup_epochs=o.warmup_epochs,
        warmup_start_lr=o.warmup_start_lr, min_lr=o.min_lr,
    )  # fmt: skip


def multigrid_settings(cfg: E2EConfig, crop_multiple: int) -> mgrid.Multigrid:
    """The multigrid section as the schedule's plain settings, crops rounded to ``crop_multiple``."""
    m = cfg.multigrid
    return mgrid.Multigrid(
        long_cycle=m.long_cycle, short_cycle=m.short_cycle,
        long_factors=tuple((float(t), float(s)) for t, s in m.long_factors),
        short_factors=tuple(m.short_factors), epoch_factor=m.epoch_factor, short_relative=m.short_relative,
        final_short_cycle=m.final_short_cycle, scale_lr=m.scale_lr, crop_multiple=crop_multiple,
    )  # fmt: skip


# Keys that may change between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = ("run.resume", "run.log_every", "run.plots", "run.device", "run.out",
                     "run.checkpoint_every", "data.workers", "data.eval_batch_size")  # fmt: skip
