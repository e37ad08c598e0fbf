"""Stage two: ``run_train(cfg)`` trains a head from a feature store (command line: ``twostage train``,
``python -m stages.train``, in ``pipeline/commands/train.py``).

Reads top to bottom: config -> store(s), checked -> train/val split -> head (seeded) -> datasets (clip
lengths checked) -> init_from / resume checkpoints, checked -> the config unpacked into the loop's plain
parts (loaders, optimizer groups, schedule, step function, evaluation) -> ``stages/train/loop.py``.
Everything that can be refused is refused before the first step. Multi-GPU:
``torchrun --nproc_per_node 8 -m stages.train CONFIG`` (DDP; rank 0 writes the files).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.core.config import to_dict
from stages.core.errors import ConfigError, StoreError
from stages.train import checks
from stages.train.config import TrainConfig
from stages.train.data import ClipDataset, EpochLoader, split_ids
from stages.train.evaluate import evaluate, named_split, store_splits
from stages.train.heads import Head, check_options, features_of, head_from_description
from stages.train.loop import (
    LoopSettings,
    cosine_schedule,
    fit,
    make_optimizer,
    param_groups,
    seed_everything,
)
from stages.train.recurrent import train_recurrent
from stages.train.runtime import Dist, distributed
from stages.train.steps import classify_step
from stages.train.targets import Targets
from store import FeatureStore


@dataclass
class Prepared:
    """Everything the loop needs, built and checked."""

    head: Head
    train_set: ClipDataset
    val_set: ClipDataset | None
    meta: dict[str, Any]
    resume: dict[str, Any] | None
    targets: Targets | None = None  # data.targets; None: the store's label


def select_videos(cfg: TrainConfig, store: FeatureStore) -> tuple[list[str], FeatureStore | None, list[str]]:
    """Training ids, the validation store (may be ``store`` itself, or None) and its ids.

    When the store's videos carry their source list's ``split``: train on ``train``, validate on ``val``
    (or, without ``val`` videos, on ``data.val_fraction`` of ``train``); ``test`` is left for ``twostage
    eval --split test``. Without splits: ``data.val_fraction`` of the labelled videos is held out.
    ``data.val_store``: validate on every labelled video of that store.
    """
    splits = store_splits(store)
    if cfg.data.val_store:
        val_store = checks.open_store(
            cfg.data.val_store, allow_incomplete=cfg.run.allow_incomplete, key="data.val_store"
        )
        train_ids = named_split(store, "train", key="data.store") if splits else split_ids(store, 0.0)[0]
        return train_ids, val_store, split_ids(val_store, 0.0)[0]
    if splits:
        return _split_videos(cfg, store, splits)
    train_ids, val_ids = split_ids(store, cfg.data.val_fraction)
    if not train_ids:
        raise StoreError(
            f"data.val_fraction={cfg.data.val_fraction} leaves no training video of the "
            f"{len(val_ids)} labelled videos in {store.path}; lower it"
        )
    return train_ids, (store if val_ids else None), val_ids


def _split_videos(
    cfg: TrainConfig, store: FeatureStore, splits: dict[str, list[str]]
) -> tuple[list[str], FeatureStore | None, list[str]]:
    """Training and validation ids of a store whose videos carry source-list splits."""
    unsplit = len(split_ids(store, 0.0)[0]) - sum(len(ids) for ids in splits.values())
    if unsplit:
        warnings.warn(f"{unsplit} labelled videos of {store.path} have no split (train/val/test) while the "
                      "others do: they are left out of training and validation", stacklevel=3)  # fmt: skip
    train = named_split(store, "train", key="data.store")
    if splits.get("val"):
        return train, store, splits["val"]
    kept, held = split_ids(store, cfg.data.val_fraction)  # the same id hash, within the train split
    members = set(train)
    train_ids, val_ids = [v for v in kept if v in members], [v for v in held if v in members]
    if not train_ids:
        raise StoreError(f"data.val_fraction={cfg.data.val_fraction} leaves none of the {len(train)} 'train' "
                         f"videos of {store.path} to train on (it has no 'val' split); lower it")  # fmt: skip
    return train_ids, (store if val_ids else None), val_ids


def head_description(cfg: TrainConfig, num_classes: int, targets: Targets | None = None) -> dict[str, Any]:
    """What checkpoints record as ``head``; ``heads.head_from_description`` builds the head from it.
    With ``data.targets`` the outputs are the targets' logits side by side, and ``targets`` says which."""
    return {"name": cfg.head.name, "options": dict(cfg.head.options), "num_frames": cfg.data.frames,
            "num_classes": num_classes} | ({"targets": targets.describe()} if targets else {})  # fmt: skip


def build(cfg: TrainConfig, store: FeatureStore, num_classes: int, targets: Targets | None = None) -> Head:
    """The head, initialised from ``run.seed`` (the same on every DDP process)."""
    description = head_description(cfg, num_classes, targets)
    check_options(cfg.head.name, cfg.head.options)  # before seeding: a bad option costs nothing
    torch.manual_seed(cfg.run.seed)
    return head_from_description(description, features_of(store))


def datasets(
    cfg: TrainConfig, store: FeatureStore, train_ids: list[str], val_store: FeatureStore | None,
    val_ids: list[str], inputs: list[str], targets: Targets | None = None,
) -> tuple[ClipDataset, ClipDataset | None]:  # fmt: skip
    """Training clips (views, jitter, token dropout) and evaluation clips (every view); lengths checked."""
    d = cfg.data
    train_set = ClipDataset(store, train_ids, d.frames, d.stride, "train", inputs, jitter=d.jitter,
                            token_dropout=d.token_dropout, seed=cfg.run.seed, views=d.views,
                            short_videos=d.short_videos, integrity=d.integrity,
                            labels=targets.encode(store, train_ids) if targets else None)  # fmt: skip
    if val_store is None:
        return train_set, None
    val_set = ClipDataset(val_store, val_ids, d.frames, d.stride, "eval", inputs, eval_clips=d.eval_clips,
                          short_videos=d.short_videos, integrity=d.integrity,
                          labels=targets.encode(val_store, val_ids) if targets else None)  # fmt: skip
    return train_set, val_set


def describe(
    cfg: TrainConfig, store: FeatureStore, head: Head, train_ids: list[str], val_ids: list[str],
    targets: Targets | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What every checkpoint and metrics header records: config, head, the store, and which of its videos
    trained the head (``twostage eval`` scores the others)."""
    inputs = list(head.inputs)
    outputs = targets.num_outputs if targets else len(store.classes)
    return {
        "config": to_dict(cfg),
        "head": head_description(cfg, outputs, targets) | {"inputs": inputs},
        "store": checks.store_meta(store, inputs),
        "data": {"train_ids": list(train_ids), "val_ids": list(val_ids), "val_store": cfg.data.val_store},
    }


def prepare(cfg: TrainConfig) -> Prepared:
    """Open, check and build everything; raises before any training when something does not fit."""
    store = checks.open_store(cfg.data.store, allow_incomplete=cfg.run.allow_incomplete)
    train_ids, val_store, val_ids = select_videos(cfg, store)
    targets = Targets.from_store(store, cfg.data.targets) if cfg.data.targets else None
    head = build(cfg, store, targets.num_outputs if targets else checks.num_classes(store), targets)
    if targets and getattr(head, "recurrent", False):
        raise ConfigError(
            f"data.targets={cfg.data.targets}: the memory head {cfg.head.name!r} trains on the store's one "
            "label only; drop data.targets (or train a memvit head per target with data.targets left out "
            "and the target as the extraction's label)"
        )
    meta = describe(cfg, store, head, train_ids, val_ids if val_store is store else [], targets)
    if val_store is not None and val_store is not store:
        checks.check_fits(val_store, meta["store"], what=f"data.store={store.path}", error=StoreError)
    train_set, val_set = datasets(cfg, store, train_ids, val_store, val_ids, list(head.inputs), targets)
    if cfg.head.init_from:
        key = f"head.init_from={cfg.head.init_from}"
        ckpt = checks.load_checkpoint(cfg.head.init_from, key="head.init_from")
        state = checks.init_state(ckpt, head=cfg.head.name, store=store, key=key, path=cfg.head.init_from)
        meta["init_from"] = {"path": cfg.head.init_from, "report": checks.load_weights(head, state, key=key)}
    resume, last = None, Path(cfg.run.out) / "last.pt"
    if cfg.run.resume and last.exists():
        resume = checks.load_checkpoint(last, key="run.resume")
        checks.check_resume(resume, cfg, store, str(last))
    return Prepared(head, train_set, val_set, meta, resume, targets)


def run_train(cfg: TrainConfig, *, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg.head`` on ``cfg.data.store``; returns the final metrics (also in ``run.out``).

    Under ``torchrun`` every process calls this; the process group is joined here and left at the end.
    ``stop_after`` ends the run after that many epochs in all, as an interruption would (tests).
    """
    with distributed(cfg.run.device) as (dist, device):
        result = train_head(prepare(cfg), cfg, dist, device, stop_after)
    return result | {"out": cfg.run.out}


def train_head(
    p: Prepared, cfg: TrainConfig, dist: Dist, device: torch.device, stop_after: int | None
) -> dict[str, Any]:
    """The config unpacked into the loop's plain parts: loaders, AdamW groups, schedule, step, evaluation."""
    if getattr(p.head, "recurrent", False):  # memory heads: stream-ordered chunks (stages/train/recurrent.py)
        return train_recurrent(p, cfg, dist, device, stop_after)
    d, o, r = cfg.data, cfg.optim, cfg.run
    seed_everything(r.seed + dist.rank)  # dropout differs per process; the init was seeded before
    head = p.head.to(device)
    common = {"workers": d.workers, "seed": r.seed, "rank": dist.rank, "world": dist.world,
              "pin_memory": device.type == "cuda"}  # fmt: skip
    data = EpochLoader(p.train_set, batch_size=d.batch_size, shuffle=True, **common)
    groups = param_groups(list(head.named_parameters()), lr=o.lr, weight_decay=o.weight_decay)
    optimizer = make_optimizer(groups, betas=o.betas, fused=device.type == "cuda")
    steps_per_epoch = math.ceil(len(data) / o.accum_steps)
    schedule = cosine_schedule(round(o.warmup_epochs * steps_per_epoch), o.epochs * steps_per_epoch,
                               o.min_lr / o.lr)  # fmt: skip
    evaluate_fn = None
    if p.val_set is not None:
        val = EpochLoader(
            p.val_set, batch_size=d.eval_batch_size or 2 * d.batch_size, shuffle=False, **common
        )
        labels, num_classes = p.val_set.labels, p.meta["head"]["num_classes"]

        def evaluate_fn(model: torch.nn.Module) -> dict[str, Any]:
            bf16 = r.bf16 and not r.fp16  # fp16 runs evaluate in fp32
            return evaluate(model, val.batches(), labels, num_classes, device=device, bf16=bf16, dist=dist,
                            targets=p.targets)  # fmt: skip

    settings = LoopSettings(out=r.out, epochs=o.epochs, accum_steps=o.accum_steps, clip_grad=o.clip_grad,
                            bf16=r.bf16, fp16=r.fp16, eval_every=r.eval_every, log_every=r.log_every,
                            plots=r.plots, tensorboard=r.tensorboard,
                            checkpoint_every=r.checkpoint_every, progress=r.progress)  # fmt: skip
    step = classify_step(device, label_smoothing=o.label_smoothing, targets=p.targets)
    return fit(head, data=data, optimizer=optimizer, schedule=schedule, step_fn=step, evaluate=evaluate_fn,
               settings=settings, meta=p.meta, dist=dist, device=device, resume=p.resume,
               stop_after=stop_after)  # fmt: skip
