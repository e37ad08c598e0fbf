"""Stage two entry point: ``python -m stages.train CONFIG [key=value ...]`` (also ``twostage train``).

Reads top to bottom: config -> store(s), checked -> train/val split -> head (seeded) -> datasets (clip
lengths checked) -> init_from / resume checkpoints, checked -> the loop (``stages/train/loop.py``).
Everything that can be refused is refused before the first step. Multi-GPU:
``torchrun --nproc_per_node 8 -m stages.train CONFIG`` (DDP; rank 0 writes the files).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from stages.core.config import config_keys, load_config
from stages.core.errors import StoreError
from stages.train import checks
from stages.train.config import TrainConfig
from stages.train.data import ClipDataset, split_ids
from stages.train.heads import Head, build_head
from stages.train.loop import train
from stages.train.runtime import setup_distributed
from store import FeatureStore


@dataclass
class Prepared:
    """Everything the loop needs, built and checked."""

    head: Head
    train_set: ClipDataset
    val_set: ClipDataset | None
    meta: dict[str, Any]
    resume: dict[str, Any] | None


def select_videos(cfg: TrainConfig, store: FeatureStore) -> tuple[list[str], FeatureStore | None, list[str]]:
    """Training ids, the validation store (may be ``store`` itself, or None) and its ids."""
    if cfg.data.val_store:
        val_store = checks.open_store(
            cfg.data.val_store, allow_incomplete=cfg.run.allow_incomplete, key="data.val_store"
        )
        return split_ids(store, 0.0)[0], val_store, split_ids(val_store, 0.0)[0]
    train_ids, val_ids = split_ids(store, cfg.data.val_fraction)
    if not train_ids:
        raise StoreError(
            f"data.val_fraction={cfg.data.val_fraction} leaves no training video of the "
            f"{len(val_ids)} labelled videos in {store.path}; lower it"
        )
    return train_ids, (store if val_ids else None), val_ids


def build(cfg: TrainConfig, store: FeatureStore, num_classes: int) -> Head:
    """The head, initialised from ``run.seed`` (the same on every DDP process)."""
    options = checks.head_options(cfg.head.name, cfg.head.options)
    torch.manual_seed(cfg.run.seed)
    frozen = store.frozen_weights() if store.spec.frozen else None
    return build_head(
        cfg.head.name,
        tensors={n: t.shape for n, t in store.tensors.items()},
        backbone=store.backbone,
        num_classes=num_classes,
        num_frames=cfg.data.frames,
        frozen=frozen,
        **options,
    )


def datasets(
    cfg: TrainConfig, store: FeatureStore, train_ids: list[str], val_store: FeatureStore | None,
    val_ids: list[str], inputs: list[str],
) -> tuple[ClipDataset, ClipDataset | None]:  # fmt: skip
    """Training clips (views, jitter, token dropout) and evaluation clips (every view); lengths checked."""
    d = cfg.data
    train_set = ClipDataset(store, train_ids, d.frames, d.stride, "train", inputs, jitter=d.jitter,
                            token_dropout=d.token_dropout, seed=cfg.run.seed, views=d.views,
                            short_videos=d.short_videos)  # fmt: skip
    if val_store is None:
        return train_set, None
    val_set = ClipDataset(val_store, val_ids, d.frames, d.stride, "eval", inputs, eval_clips=d.eval_clips,
                          short_videos=d.short_videos)  # fmt: skip
    return train_set, val_set


def describe(cfg: TrainConfig, store: FeatureStore, head: Head) -> dict[str, Any]:
    """What every checkpoint and metrics header records of the head and the store it was trained on."""
    inputs = list(head.inputs)
    return {
        "head": {
            "name": cfg.head.name,
            "options": dict(cfg.head.options),
            "num_frames": cfg.data.frames,
            "num_classes": len(store.classes),
            "inputs": inputs,
        },  # fmt: skip
        "store": checks.store_meta(store, inputs),
    }


def prepare(cfg: TrainConfig) -> Prepared:
    """Open, check and build everything; raises before any training when something does not fit."""
    store = checks.open_store(cfg.data.store, allow_incomplete=cfg.run.allow_incomplete)
    train_ids, val_store, val_ids = select_videos(cfg, store)
    head = build(cfg, store, checks.num_classes(store))
    meta = describe(cfg, store, head)
    if val_store is not None and val_store is not store:
        checks.check_fits(val_store, meta["store"], what=f"data.store={store.path}", error=StoreError)
    train_set, val_set = datasets(cfg, store, train_ids, val_store, val_ids, list(head.inputs))
    if cfg.head.init_from:
        key = f"head.init_from={cfg.head.init_from}"
        ckpt = checks.load_checkpoint(cfg.head.init_from, key="head.init_from")
        checks.check_checkpoint(ckpt, head=cfg.head.name, store=store, key=key)
        meta["init_from"] = {
            "path": cfg.head.init_from,
            "report": checks.load_weights(head, ckpt["model"], key=key),
        }
    resume, last = None, Path(cfg.run.out) / "last.pt"
    if cfg.run.resume and last.exists():
        resume = checks.load_checkpoint(last, key="run.resume")
        checks.check_resume(resume, cfg, store, str(last))
    return Prepared(head, train_set, val_set, meta, resume)


def run_train(cfg: TrainConfig, *, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg.head`` on ``cfg.data.store``; returns the final metrics (also in ``run.out``).

    Under ``torchrun`` every process calls this; the process group is joined here and left at the end.
    ``stop_after`` ends the run after that many epochs in all, as an interruption would (tests).
    """
    owned = torch_dist.is_available() and not torch_dist.is_initialized()
    dist, device = setup_distributed(cfg.run.device)
    try:
        p = prepare(cfg)
        result = train(p.head, p.train_set, p.val_set, cfg=cfg, meta=p.meta, dist=dist, device=device,
                       resume=p.resume, stop_after=stop_after)  # fmt: skip
    finally:
        if owned and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    return result | {"out": cfg.run.out}


def main(argv: list[str] | None = None) -> int:
    keys = "\n".join(f"  {k}" for k in config_keys(TrainConfig))
    parser = argparse.ArgumentParser(
        prog="python -m stages.train",
        description="Stage two: train a temporal head on a feature store (checkpoints, metrics.jsonl and "
        "curves.png go to run.out).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: key=value with dotted keys, e.g. head.name=vivit_fe optim.lr=1e-3 "
        f"head.options.depth=2\n{keys}\n\nSee configs/train/ for ready configs. "
        "Multi-GPU: torchrun --nproc_per_node N -m stages.train CONFIG",
    )
    parser.add_argument("config", help="YAML config (configs/train/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    cfg = load_config(TrainConfig, args.config, args.overrides)
    result = run_train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "type"}, indent=2, default=str))
    return 0
