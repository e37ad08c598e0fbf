"""The end-to-end path: ``run_e2e(cfg)`` trains a backbone and a head from decoded videos (command line:
``twostage e2e``, ``python -m stages.e2e``, in ``pipeline/commands/e2e.py``).

Reads top to bottom: config -> videos, split -> backbone (trainable) -> the multigrid plan at its patch
size -> head, checked against the plan's frame counts and crops -> one module -> datasets -> the config
unpacked into the loop's plain parts (schedule-following batches, two AdamW learning rates, an LR factor
per optimizer step, stage two's step and evaluation) -> ``stages/train/loop.py``. Everything that can be
refused is refused before the first step; the schedule is printed before training. Multi-GPU:
``torchrun --nproc_per_node 8 -m stages.e2e CONFIG`` (``data.batch_size`` is global).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.core.config import to_dict
from stages.core.errors import CheckpointError, ConfigError, SourceError
from stages.e2e import data as e2e_data
from stages.e2e import multigrid as mgrid
from stages.e2e.config import RESUMABLE_CHANGES, E2EConfig, baseline, multigrid_settings
from stages.e2e.model import E2EModel, available_tensors, check_head_takes
from stages.models import Backbone, build_backbone
from stages.train import checks
from stages.train.evaluate import evaluate
from stages.train.heads import Head, check_options, head_from_description
from stages.train.loop import LoopSettings, fit, make_optimizer, param_groups, seed_everything
from stages.train.runtime import Dist, distributed
from stages.train.steps import classify_step
from stages.video.augment import Augment
from stages.video.dataset import VideoClipDataset
from stages.video.preprocess import Preprocessing
from stages.video.sources import VideoItem, read_source

logger = logging.getLogger(__name__)


@dataclass
class Videos:
    """Labelled training and evaluation videos with their class indices."""

    train: list[VideoItem]
    train_labels: list[int]
    val: list[VideoItem]
    val_labels: list[int]
    classes: list[str]


@dataclass
class Prepared:
    """Everything the loop needs, built and checked."""

    model: E2EModel
    plan: mgrid.Plan
    videos: Videos
    meta: dict[str, Any]
    resume: dict[str, Any] | None


def held_out(video_id: str, fraction: float) -> bool:
    """Whether ``video_id`` is held out: a stable hash of the id alone (as stage two's ``split_ids``)."""
    digest = hashlib.blake2b(video_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def read_videos(cfg: E2EConfig) -> Videos:
    """Training and evaluation videos: ``data.val_source``, else ``data.val_fraction`` of the source."""
    d = cfg.data
    items, classes = read_source(d.source, classes=d.classes)
    labelled = [i for i in items if i.label is not None]
    if d.val_source:
        train, val = (
            labelled,
            [i for i in read_source(d.val_source, classes=classes)[0] if i.label is not None],
        )
    else:
        train = [i for i in labelled if not held_out(i.id, d.val_fraction)]
        val = [i for i in labelled if held_out(i.id, d.val_fraction)]
    if not train:
        raise SourceError(
            f"data.source={d.source} leaves no labelled training video ({len(labelled)} labelled, "
            f"data.val_fraction={d.val_fraction}); give labels, or lower data.val_fraction"
        )
    index = {c: k for k, c in enumerate(classes)}
    return Videos(train, [index[i.label] for i in train], val, [index[i.label] for i in val], list(classes))


def make_backbone(cfg: E2EConfig, device: torch.device) -> Backbone:
    """The trainable backbone (random-init entries seeded with ``run.seed``)."""
    b = cfg.backbone
    torch.manual_seed(cfg.run.seed)
    return build_backbone(b.name, pretrained=b.pretrained, weights_file=b.weights_file, device=device,
                          trainable=b.trainable, random_init=b.random_init)  # fmt: skip


def make_plan(cfg: E2EConfig, patch: int) -> mgrid.Plan:
    """The schedule with every crop a multiple of the backbone's patch (``multigrid.crop_multiple``)."""
    multiple = cfg.multigrid.crop_multiple or patch
    problems = []
    if cfg.data.crop % patch:
        problems.append(f"data.crop={cfg.data.crop} is not a multiple of the backbone's {patch} px patch; "
                        f"use {mgrid.snap(cfg.data.crop, patch) or patch}")  # fmt: skip
    if multiple % patch:
        problems.append(
            f"multigrid.crop_multiple={multiple} is not a multiple of the {patch} px patch; use {patch}"
        )
    problems += mgrid.problems(baseline(cfg), multigrid_settings(cfg, multiple))
    if problems:
        raise ConfigError(problems, source="(multigrid schedule)")
    return mgrid.make_plan(baseline(cfg), multigrid_settings(cfg, multiple))


def head_description(cfg: E2EConfig, num_classes: int) -> dict[str, Any]:
    """What checkpoints record as ``head`` (``heads.head_from_description`` builds it; stage two reads it)."""
    return {"name": cfg.head.name, "options": dict(cfg.head.options), "num_frames": cfg.data.frames,
            "num_classes": num_classes}  # fmt: skip


def make_model(cfg: E2EConfig, backbone: Backbone, plan: mgrid.Plan, num_classes: int) -> E2EModel:
    """The head (seeded) over the backbone's tensors at the full crop, checked against the plan."""
    check_options(cfg.head.name, cfg.head.options)
    tensors = available_tensors(backbone, cfg.data.crop)
    torch.manual_seed(cfg.run.seed)
    head: Head = head_from_description(head_description(cfg, num_classes),
                                       {"tensors": tensors, "backbone": backbone.spec})  # fmt: skip
    frames = {e.frames for e in plan.epochs}
    crops = {c for e in plan.epochs for _, c in e.short_cycle}
    check_head_takes(head, cfg.head.name, frames=frames, crops=crops, full=(cfg.data.frames, cfg.data.crop))
    model = E2EModel(backbone, head.to(backbone.device), bf16=cfg.run.bf16)
    freeze_unreached(model, cfg.data.frames, cfg.data.crop)
    return model


def freeze_unreached(model: E2EModel, frames: int, crop: int) -> list[str]:
    """Stop training what no gradient reaches (blocks after the deepest tensor the head reads, a final
    norm it does not read): one probe backward on a random clip. DDP needs every trainable parameter to
    receive a gradient; a single process gains identical optimizer groups."""
    was_training = model.training
    with torch.random.fork_rng(devices=[]):
        model.eval()
        x = torch.randn(1, frames, 3, crop, crop, device=model.backbone.device)  # [1, T, 3, S, S]
        model({"pixels": x}).float().square().sum().backward()
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
        p.grad = None
    model.train(was_training)
    return frozen


def describe(cfg: E2EConfig, model: E2EModel, plan: mgrid.Plan, videos: Videos) -> dict[str, Any]:
    """What every checkpoint and metrics header records (stage two's ``head.init_from`` reads it)."""
    inputs = list(model.head.inputs)
    shapes = available_tensors(model.backbone, cfg.data.crop)
    return {
        "config": to_dict(cfg),
        "head": head_description(cfg, len(videos.classes)) | {"inputs": inputs},
        "e2e": {
            "backbone": model.backbone.spec,
            "classes": videos.classes,
            "tensors": {n: list(shapes[n]) for n in inputs},
            "crop": cfg.data.crop,
            "schedule": mgrid.epoch_records(plan),
        },
        "data": {"train_ids": [i.id for i in videos.train], "val_ids": [i.id for i in videos.val]},
    }


def check_resume(ckpt: dict[str, Any], cfg: E2EConfig, path: Path) -> None:
    """Refuse resuming a run whose config would train something else."""
    old, new = _prune(ckpt.get("config", {})), _prune(to_dict(cfg))
    changes = [f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {new.get(s, {}).get(k)!r}"
               for s in sorted(set(old) | set(new)) for k in sorted(set(old.get(s, {})) | set(new.get(s, {})))
               if old.get(s, {}).get(k) != new.get(s, {}).get(k)]  # fmt: skip
    if "e2e" not in ckpt or changes:
        raise CheckpointError(
            f"{path} was written by another run ({'; '.join(changes[:6]) or 'not an e2e run'}); resuming "
            "would not continue it. Use another run.out, or run.resume=false to start anew here."
        )


def _prune(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {section: dict(values) for section, values in config.items()}
    for key in RESUMABLE_CHANGES:
        section, name = key.split(".")
        out.get(section, {}).pop(name, None)
    return out


def prepare(cfg: E2EConfig, device: torch.device) -> Prepared:
    """Read, build and check everything; raises before any training when something does not fit."""
    videos = read_videos(cfg)
    backbone = make_backbone(cfg, device)
    plan = make_plan(cfg, int(backbone.spec["patch_size"]))
    model = make_model(cfg, backbone, plan, len(videos.classes))
    meta = describe(cfg, model, plan, videos)
    resume, last = None, Path(cfg.run.out) / "last.pt"
    if cfg.run.resume and last.exists():
        resume = checks.load_checkpoint(last, key="run.resume")
        check_resume(resume, cfg, last)
    return Prepared(model, plan, videos, meta, resume)


def run_e2e(cfg: E2EConfig, *, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg.backbone`` and ``cfg.head`` end to end; returns the final metrics (also in ``run.out``).

    Under ``torchrun`` every process calls this; the process group is joined here and left at the end.
    ``stop_after`` ends the run after that many epochs in all, as an interruption would (tests).
    """
    with distributed(cfg.run.device) as (dist, device):
        if cfg.data.batch_size % dist.world:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} (global) does not split over "
                              f"{dist.world} processes; use a multiple of {dist.world}")  # fmt: skip
        p = prepare(cfg, device)
        if dist.main:
            logger.info("multigrid schedule:\n%s", mgrid.format_table(p.plan))
        result = train(p, cfg, dist, device, stop_after)
    return result | {"out": cfg.run.out}


def lr_by_step(plan: mgrid.Plan, steps_per_epoch: list[int]) -> Callable[[int], float]:
    """The factor of the base LR at each optimizer step: the plan's LR at ``epoch + step in epoch /
    steps in epoch`` (SlowFast's per-iteration rule), divided by ``optim.lr``."""
    starts = [0]
    for n in steps_per_epoch:
        starts.append(starts[-1] + n)

    def factor(step: int) -> float:
        e = min(bisect.bisect_right(starts, step) - 1, len(steps_per_epoch) - 1)
        return plan.lr(e + (step - starts[e]) / steps_per_epoch[e]) / plan.base.lr

    return factor


def datasets(
    cfg: E2EConfig, videos: Videos, spec: dict[str, Any]
) -> tuple[VideoClipDataset, VideoClipDataset]:
    """Training clips (augmented, any shape per key) and evaluation clips (every view, full shape)."""
    d, a = cfg.data, cfg.augment
    pre = dataclasses.replace(Preprocessing.from_backbone(spec, d.short_side or d.crop), size=d.crop)
    common = {"frames": d.frames, "stride": d.stride, "preprocessing": pre, "seed": cfg.run.seed,
              "decoder": d.decoder}  # fmt: skip
    augment = Augment(scale=a.scale, ratio=a.ratio, flip=a.flip, color_jitter=a.color_jitter)
    train = VideoClipDataset(videos.train, videos.train_labels, mode="train", augment=augment, **common)
    val = VideoClipDataset(videos.val, videos.val_labels, mode="eval", temporal_views=d.temporal_views,
                           spatial_views=d.spatial_views, **common)  # fmt: skip
    return train, val


def train(
    p: Prepared, cfg: E2EConfig, dist: Dist, device: torch.device, stop_after: int | None
) -> dict[str, Any]:
    """The config unpacked into the loop's parts: scheduled batches, two LRs, the step, the evaluation."""
    d, o, r = cfg.data, cfg.optim, cfg.run
    seed_everything(r.seed + dist.rank)  # dropout differs per process; the init was seeded before
    train_set, val_set = datasets(cfg, p.videos, p.model.backbone.spec)
    first = 0 if p.resume is None else int(p.resume["epoch"])
    data = e2e_data.ScheduledBatches(train_set, p.plan.epochs, frames=d.frames, stride=d.stride,
                                     long_cycle=cfg.multigrid.long_cycle, seed=r.seed, rank=dist.rank,
                                     world=dist.world, workers=d.workers, pin_memory=device.type == "cuda",
                                     first_epoch=first)  # fmt: skip
    model = p.model
    backbone_lr = o.lr if o.backbone_lr is None else o.backbone_lr
    groups = param_groups(list(model.head.named_parameters()), lr=o.lr, weight_decay=o.weight_decay)
    groups += param_groups(
        list(model.backbone.named_parameters()), lr=backbone_lr, weight_decay=o.weight_decay
    )
    optimizer = make_optimizer(groups, betas=o.betas, fused=device.type == "cuda")
    steps = [-(-data.batches_in(e) // o.accum_steps) for e in range(len(p.plan.epochs))]
    evaluate_fn = None
    if p.videos.val:
        share = d.batch_size // dist.world
        val = e2e_data.eval_loader(val_set, batch_size=d.eval_batch_size or share, workers=d.workers,
                                   rank=dist.rank, world=dist.world,
                                   pin_memory=device.type == "cuda")  # fmt: skip
        labels, num_classes = val_set.labels, len(p.videos.classes)

        def evaluate_fn(m: torch.nn.Module) -> dict[str, Any]:
            return evaluate(m, val.batches(), labels, num_classes, device=device, bf16=r.bf16, dist=dist)

    settings = LoopSettings(out=r.out, epochs=len(p.plan.epochs), accum_steps=o.accum_steps,
                            clip_grad=o.clip_grad, bf16=r.bf16, eval_every=r.eval_every,
                            log_every=r.log_every, plots=r.plots,
                            checkpoint_every=r.checkpoint_every)  # fmt: skip
    step = classify_step(device, label_smoothing=o.label_smoothing)
    return fit(model, data=data, optimizer=optimizer, schedule=lr_by_step(p.plan, steps), step_fn=step,
               evaluate=evaluate_fn, settings=settings, meta=p.meta, dist=dist, device=device,
               resume=p.resume, stop_after=stop_after)  # fmt: skip


def schedule_of(cfg: E2EConfig) -> mgrid.Plan:
    """The plan ``--print-schedule`` shows, without building anything: crops rounded to
    ``multigrid.crop_multiple`` (SlowFast's sizes when it is unset)."""
    return mgrid.make_plan(baseline(cfg), multigrid_settings(cfg, cfg.multigrid.crop_multiple or 1))
