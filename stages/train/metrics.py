"""Video-level metrics from per-video probabilities, shared by evaluation and ``data.targets``.

single-label: probs [N, C], labels [N] --> top-1, top-5 (C >= 5), mean class accuracy
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Average precision of one class: the mean, over its positives, of the precision at each positive's
    rank when videos are sorted by score (ties broken by video order)."""
    order = torch.argsort(scores, descending=True, stable=True)
    hits = positive[order].double()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    return float((precision * hits).sum() / hits.sum())


def multilabel_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """mAP over the classes with at least one positive video (Charades' convention), and precision@1."""
    if len(labels) == 0:
        return {"mAP": None, "precision_at_1": None, "classes_scored": 0, "videos": 0}
    positive = labels > 0
    scored = [c for c in range(labels.shape[1]) if positive[:, c].any()]
    aps = [average_precision(probs[:, c], positive[:, c]) for c in scored]
    top = probs.argmax(dim=1)
    p_at_1 = positive.gather(1, top[:, None])[:, 0].double().mean().item()
    return {"mAP": float(np.mean(aps)) if aps else None, "precision_at_1": p_at_1,
            "classes_scored": len(scored), "videos": len(labels)}  # fmt: skip
