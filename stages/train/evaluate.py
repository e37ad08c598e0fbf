"""Multi-view evaluation, and ``twostage eval CHECKPOINT STORE [--json]`` for a saved checkpoint.

    every (video, view, clip) of the eval set --head--> softmax [C] --mean per video--> probs [N, C]
      --> top-1, top-5 (C >= 5), mean class accuracy (video level); val loss (clip level)
    data.targets (stages/train/targets.py): softmax / sigmoid per target --> each target's metrics

``twostage eval`` rebuilds the head from the checkpoint (name, options, frames), refuses a store whose
backbone, classes or tensors differ from the ones it was trained on, and scores only the videos the
checkpoint did not train on (their ids are in the checkpoint), unless asked for all of them.

Example:
    twostage eval runs/train/evl_b16/best.pt runs/k400_val_b16_evl.zarr --json
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from stages.core.errors import ConfigError, StoreError
from stages.train import checks
from stages.train.data import ClipDataset, EpochLoader, split_ids
from stages.train.heads import Head, features_of, head_from_description
from stages.train.metrics import video_metrics
from stages.train.online import online_loader, run_online
from stages.train.runtime import Dist, autocast, pick_device, to_device
from stages.train.streams import StreamLoader
from stages.train.targets import Targets
from store import FeatureStore


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[Any], labels: np.ndarray, num_classes: int, *, device: torch.device,
    bf16: bool, dist: Dist | None = None, targets: Targets | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Clip softmax averaged over every view of each video, then video metrics (summed over processes).
    With ``targets`` (``data.targets``): each target's softmax or sigmoid, averaged, and its metrics."""
    dist = dist or Dist()
    model.eval()
    probs = torch.zeros(len(labels), num_classes, dtype=torch.float64, device=device)  # [N, C]
    counts = torch.zeros(len(labels), dtype=torch.float64, device=device)  # [N] clips per video
    loss = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, clips
    t0 = time.perf_counter()
    for batch in loader:
        feats, y = to_device(batch, device)
        with autocast(device, bf16):
            logits = model(feats).float()  # [B, C]
        video = batch["video"].to(device)
        p = targets.probabilities(logits) if targets else logits.softmax(dim=1)
        probs.index_add_(0, video, p.double())
        counts.index_add_(0, video, torch.ones_like(video, dtype=torch.float64))
        clip_loss = (
            targets.loss(logits, y) * len(y) if targets else F.cross_entropy(logits, y, reduction="sum")
        )
        loss += torch.stack([clip_loss.double(), loss.new_tensor(len(y))])
    if dist.active:
        for t in (probs, counts, loss):
            torch_dist.all_reduce(t)
    seen = counts > 0
    probs = (probs[seen] / counts[seen, None]).cpu()  # [N', C]
    y = torch.as_tensor(labels)[seen.cpu()]
    out = targets.metrics(probs, y) if targets else video_metrics(probs, y)
    return out | {"val_loss": (loss[0] / loss[1].clamp(min=1)).item(), "clips": int(loss[1].item()),
                  "eval_seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


def evaluate_online(
    model: nn.Module, loader: Iterable[Any], labels: np.ndarray, num_classes: int, *, device: torch.device,
    bf16: bool, dist: Dist | None = None, keep_chunks: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Memory heads: each video run online, chunk by chunk (``stages/train/online.py``). ``top1``... score
    each video's last chunk (it has seen the whole video through memory), ``top1_mean`` the softmax mean
    over its chunks, ``chunk_top1`` every chunk; ``keep_chunks`` adds each chunk's prediction."""
    dist, t0 = dist or Dist(), time.perf_counter()
    run = run_online(model, loader, num_videos=len(labels), num_classes=num_classes, device=device, bf16=bf16,
                     keep_chunks=keep_chunks)  # fmt: skip
    if dist.active:
        for t in (run.last, run.total, run.chunks, run.stats):
            torch_dist.all_reduce(t)
    seen, y = run.chunks > 0, torch.as_tensor(labels)
    out = video_metrics(run.last[seen].cpu(), y[seen.cpu()])
    mean = video_metrics((run.total[seen] / run.chunks[seen, None]).cpu(), y[seen.cpu()])
    hits, loss, n = run.stats.tolist()
    out |= {"top1_mean": mean["top1"], "chunk_top1": hits / max(n, 1), "val_loss": loss / max(n, 1),
            "clips": int(n), "eval_seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    if keep_chunks:
        out["per_video"] = {
            video: [{"chunk": c, "pred": pred, "prob": round(prob, 4)} for c, pred, prob in rows]
            for video, rows in run.by_video().items()
        }
    return out


def checkpoint_device(ckpt: dict[str, Any], device: str) -> tuple[torch.device, bool]:
    """The device to score a checkpoint on, and whether in bf16 (as it trained; fp16 runs score in fp32)."""
    run = ckpt["config"]["run"]
    return pick_device(device), bool(run["bf16"]) and not run.get("fp16", False)


def online_stream(
    ckpt: dict[str, Any], head: Head, store: FeatureStore, ids: list[str], *, streams: int, workers: int = 0,
    integrity: str = "check", pin_memory: bool = False,
) -> StreamLoader:  # fmt: skip
    """Every video of ``ids`` whole, in order, chunked as the memory head ``ckpt`` trained."""
    data = ckpt["config"]["data"]
    return online_loader(store, ids, frames=data["frames"], stride=data["stride"], tensors=head.inputs,
                         streams=streams, stream_by=data.get("stream_by", "video"), workers=workers,
                         integrity=integrity, pin_memory=pin_memory)  # fmt: skip


def head_from_checkpoint(ckpt: dict[str, Any], store: FeatureStore, key: str) -> Head:
    """The checkpoint's head, rebuilt for ``store`` (refused unless it fits) with the trained weights."""
    checks.check_checkpoint(ckpt, head=ckpt["head"]["name"], store=store, key=key)
    head = head_from_description(ckpt["head"], features_of(store))
    checks.load_weights(head, ckpt["model"], key=key)
    return head


def training_ids(ckpt: dict[str, Any], store: FeatureStore) -> set[str]:
    """Ids of the videos that trained ``ckpt``: recorded in it, or (older checkpoints) re-derived from the
    id-hash split of its own store, which depends on the ids and ``data.val_fraction`` alone."""
    recorded = ckpt.get("data", {}).get("train_ids")
    if recorded is not None:
        return set(recorded)
    data = ckpt["config"]["data"]
    if data.get("val_store") or ckpt["store"]["fingerprint"] != store.spec.fingerprint:
        return set()  # trained on another store: ids that also appear here are checked by name below
    return set(split_ids(store, data["val_fraction"])[0])


EVAL_SPLITS = ("heldout", "all", "train", "val", "test")  # what `twostage eval --split` scores


def store_splits(store: FeatureStore) -> dict[str, list[str]]:
    """Labelled ids by the split their source list gave them (``train``/``val``/``test``, kept in each
    video's meta by stage one); ``{}`` when no video has one."""
    out: dict[str, list[str]] = {}
    for rec in store.videos:
        if rec.label >= 0 and rec.meta.get("split"):
            out.setdefault(rec.meta["split"], []).append(rec.id)
    return out


def named_split(store: FeatureStore, split: str, key: str = "--split") -> list[str]:
    """Labelled ids of one source-list split; refuses a store without splits or without that split."""
    ids = store_splits(store).get(split)
    if ids:
        return ids
    if not any(rec.meta.get("split") for rec in store.videos):
        raise StoreError(
            f"{key} {split}: no video of {store.path} has a split (its source list had no 'split' column of "
            "train/val/test); extract from a list that has one (`twostage sources` writes it), or score "
            "--split heldout"
        )
    have = Counter(f"{rec.meta.get('split') or 'none'}{'' if rec.label >= 0 else ' (unlabelled)'}"
                   for rec in store.videos)  # fmt: skip
    raise StoreError(
        f"{key} {split}: {store.path} has no labelled {split!r} videos; it has {dict(sorted(have.items()))}; "
        "pick a split it has"
    )


def select_eval_ids(ckpt: dict[str, Any], store: FeatureStore, split: str) -> tuple[list[str], int, str]:
    """The labelled ids to score, how many of them trained the checkpoint, and a description of the split.

    ``split="heldout"`` keeps only videos the checkpoint did not train on (and refuses when none are left);
    ``"all"`` keeps every labelled video; ``"train"``/``"val"``/``"test"`` the videos of that source-list
    split (refused when the store has no such split).
    """
    if split not in EVAL_SPLITS:
        raise ConfigError(f"split={split!r}; expected one of {', '.join(EVAL_SPLITS)}")
    trained = training_ids(ckpt, store)
    if split not in ("heldout", "all"):
        ids = named_split(store, split)
        seen = [v for v in ids if v in trained]
        return ids, len(seen), f"the {split!r} split ({len(ids)} labelled videos; {len(seen)} trained on)"
    labelled = split_ids(store, 0.0)[0]
    seen = [v for v in labelled if v in trained]
    if split == "all":
        return labelled, len(seen), f"all {len(labelled)} labelled videos ({len(seen)} used in training)"
    held = [v for v in labelled if v not in trained]
    if not held:
        raise StoreError(
            f"all {len(labelled)} labelled videos of {store.path} were used to train this checkpoint, so "
            "there is nothing held out to score; evaluate on another store (e.g. the validation split's), "
            "or pass --split all to score the training videos (not a test score)"
        )
    return held, 0, f"held-out videos ({len(held)} of {len(labelled)}; {len(seen)} training videos left out)"


def evaluate_checkpoint(
    checkpoint: str,
    store_path: str,
    *,
    split: str = "heldout",
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    clips: int | None = None,
    allow_incomplete: bool = False,
    integrity: str = "check",
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on the labelled videos of ``store_path`` it did not train on (``split=
    "heldout"``), or on all of them (``"all"``: ``training_videos`` says how many trained it).

    Raises:
        CheckpointError: not a stage-two checkpoint, or one trained on another backbone/classes/tensors.
        StoreError: the store is incomplete (unless ``allow_incomplete``), or nothing is held out;
            StoreMismatchError: too few rows.
    """
    ckpt = checks.load_checkpoint(checkpoint, key="CHECKPOINT")
    store = checks.open_store(store_path, allow_incomplete=allow_incomplete, key="STORE")
    head = head_from_checkpoint(ckpt, store, key=f"checkpoint {checkpoint}")
    ids, seen, description = select_eval_ids(ckpt, store, split)
    data = ckpt["config"]["data"]
    dev, bf16 = checkpoint_device(ckpt, device)
    num_classes = ckpt["head"]["num_classes"]
    targets = Targets.of_head(ckpt["head"])
    if getattr(head, "recurrent", False):  # memory heads: every video online, chunk by chunk
        stream = online_stream(ckpt, head, store, ids, streams=batch_size, workers=workers,
                               integrity=integrity, pin_memory=dev.type == "cuda")  # fmt: skip
        metrics = evaluate_online(head.to(dev), stream.batches(), stream.dataset.labels, num_classes,
                                  device=dev, bf16=bf16, keep_chunks=True)  # fmt: skip
        metrics["per_video"] = {ids[v]: chunks for v, chunks in metrics["per_video"].items()}
        return {"checkpoint": str(checkpoint), "store": store.path, "head": ckpt["head"]["name"],
                "epoch": ckpt["epoch"], "split": split, "split_description": description,
                "training_videos": seen, "classes": list(store.classes), **metrics}  # fmt: skip
    dataset = ClipDataset(store, ids, data["frames"], data["stride"], "eval", head.inputs,
                          eval_clips=clips or data["eval_clips"], short_videos=data["short_videos"],
                          integrity=integrity,
                          labels=targets.encode(store, ids) if targets else None)  # fmt: skip
    loader = EpochLoader(dataset, batch_size=batch_size, shuffle=False, workers=workers,
                         pin_memory=dev.type == "cuda")  # fmt: skip
    metrics = evaluate(head.to(dev), loader.batches(), dataset.labels, num_classes, device=dev, bf16=bf16,
                       targets=targets)  # fmt: skip
    return {"checkpoint": str(checkpoint), "store": store.path, "head": ckpt["head"]["name"],
            "epoch": ckpt["epoch"], "split": split, "split_description": description,
            "training_videos": seen, **metrics}  # fmt: skip
