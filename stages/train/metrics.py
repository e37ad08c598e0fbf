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
