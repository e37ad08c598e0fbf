"""Multi-view evaluation, and ``twostage eval CHECKPOINT STORE [--json]`` for a saved checkpoint.

    every (video, view, clip) of the eval set --head--> softmax [C] --mean per video--> probs [N, C]
      --> top-1, top-5 (C >= 5), mean class accuracy (video level); val loss (clip level)

``twostage eval`` rebuilds the head from the checkpoint (name, options, frames), refuses a store whose
backbone, classes or tensors differ from the ones it was trained on, and evaluates every labelled video.

Example:
    twostage eval runs/train/evl_b16/best.pt runs/k400_val_b16_evl.zarr --json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from stages.train import checks
from stages.train.data import ClipDataset, make_loader, split_ids
from stages.train.heads import Head, build_head
from stages.train.runtime import Dist, autocast, pick_device, to_device
from store import FeatureStore


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, labels: np.ndarray, num_classes: int, *, device: torch.device,
    bf16: bool, dist: Dist | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Clip softmax averaged over every view of each video, then video metrics (summed over processes)."""
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
        probs.index_add_(0, video, logits.softmax(dim=1).double())
        counts.index_add_(0, video, torch.ones_like(video, dtype=torch.float64))
        loss += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), loss.new_tensor(len(y))])
    if dist.active:
        for t in (probs, counts, loss):
            torch_dist.all_reduce(t)
    seen = counts > 0
    probs = (probs[seen] / counts[seen, None]).cpu()  # [N', C]
    out = video_metrics(probs, torch.as_tensor(labels)[seen.cpu()])
    return out | {"val_loss": (loss[0] / loss[1].clamp(min=1)).item(), "clips": int(loss[1].item()),
                  "eval_seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


def video_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """top-1, top-5 (when C >= 5) and mean class accuracy from averaged probabilities ``[N, C]``."""
    N, C = probs.shape
    if N == 0:
        return {"top1": None, "top5": None, "mean_class_acc": None, "videos": 0}
    hit = probs.argmax(dim=1) == labels  # [N]
    top5 = None
    if C >= 5:
        top5 = (probs.topk(5, dim=1).indices == labels[:, None]).any(dim=1).double().mean().item()
    per_class = [hit[labels == c].double().mean().item() for c in range(C) if (labels == c).any()]
    return {"top1": hit.double().mean().item(), "top5": top5, "mean_class_acc": float(np.mean(per_class)),
            "videos": N}  # fmt: skip


def head_from_checkpoint(ckpt: dict[str, Any], store: FeatureStore, key: str) -> Head:
    """The checkpoint's head, rebuilt for ``store`` (refused unless it fits) with the trained weights."""
    meta = ckpt["head"]
    checks.check_checkpoint(ckpt, head=meta["name"], store=store, key=key)
    head = build_head(
        meta["name"],
        tensors={n: t.shape for n, t in store.tensors.items()},
        backbone=store.backbone,
        num_classes=meta["num_classes"],
        num_frames=meta["num_frames"],
        frozen=store.frozen_weights() if store.spec.frozen else None,
        **meta["options"],
    )
    checks.load_weights(head, ckpt["model"], key=key)
    return head


def evaluate_checkpoint(
    checkpoint: str,
    store_path: str,
    *,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    clips: int | None = None,
    allow_incomplete: bool = False,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on every labelled video of ``store_path``.

    Raises:
        CheckpointError: not a stage-two checkpoint, or one trained on another backbone/classes/tensors.
        StoreError: the store is incomplete (unless ``allow_incomplete``); StoreMismatchError: too few rows.
    """
    ckpt = checks.load_checkpoint(checkpoint, key="CHECKPOINT")
    store = checks.open_store(store_path, allow_incomplete=allow_incomplete, key="STORE")
    head = head_from_checkpoint(ckpt, store, key=f"checkpoint {checkpoint}")
    data = ckpt["config"]["data"]
    ids = split_ids(store, 0.0)[0]  # every labelled video
    eval_clips = clips or data["eval_clips"]
    dataset = ClipDataset(store, ids, data["frames"], data["stride"], "eval", head.inputs,
                          eval_clips=eval_clips, short_videos=data["short_videos"])  # fmt: skip
    dev = pick_device(device)
    loader = make_loader(
        dataset, batch_size=batch_size, shuffle=False, workers=workers, pin_memory=dev.type == "cuda"
    )
    bf16 = bool(ckpt["config"]["run"]["bf16"])
    metrics = evaluate(
        head.to(dev), loader, dataset.labels, ckpt["head"]["num_classes"], device=dev, bf16=bf16
    )
    return {"checkpoint": str(checkpoint), "store": store.path, "head": ckpt["head"]["name"],
            "epoch": ckpt["epoch"], **metrics}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="twostage eval",
        description="Evaluate a stage-two checkpoint on every labelled video of a store (softmax averaged "
        "over all stored views): top-1, top-5, mean class accuracy.",
        epilog="The store must come from the same backbone, classes and tensors as the checkpoint's "
        "(the same extract config; other videos, views or splits are fine).",
    )
    parser.add_argument("checkpoint", help="a last.pt / best.pt written by `twostage train`")
    parser.add_argument("store", help="feature store to evaluate on (path or fsspec URL)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per batch (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="loader processes (default 2)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda:1...")
    parser.add_argument(
        "--clips", type=int, help="clips per stored view (default: the run's data.eval_clips)"
    )
    parser.add_argument(
        "--allow-incomplete", action="store_true", help="evaluate a store still being written"
    )
    a = parser.parse_args(argv)
    m = evaluate_checkpoint(a.checkpoint, a.store, batch_size=a.batch_size, workers=a.workers,
                            device=a.device, clips=a.clips, allow_incomplete=a.allow_incomplete)  # fmt: skip
    if a.json:
        print(json.dumps(m, indent=2, default=str))
        return 0
    top5 = "n/a (< 5 classes)" if m["top5"] is None else f"{m['top5']:.4f}"
    print(f"{m['head']} checkpoint {m['checkpoint']} (epoch {m['epoch']}) on {m['store']}: "
          f"{m['videos']} videos, {m['clips']} clips")  # fmt: skip
    print(f"  top-1 {m['top1']:.4f}  top-5 {top5}  mean class accuracy {m['mean_class_acc']:.4f}  "
          f"loss {m['val_loss']:.4f}")  # fmt: skip
    return 0
