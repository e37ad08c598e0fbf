"""Step functions for :func:`stages.train.loop.fit`: one batch in, loss, logits and labels out.

    classify_step: {"feats": {name: [B, T, ...]}, "label": [B]} --model--> logits [B, C]
                   --cross-entropy (label smoothing) in float32--> Step(loss, logits, labels)
                   data.targets: "label" [B, W] --Targets.loss (CE per single-label target, BCE per
                   multi-label one, summed)--> Step(loss, the first target's logits and labels)

A step function may carry a state from one step to the next (``fit`` saves it in every checkpoint); the
plain classifier keeps none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stages.train.loop import Step
from stages.train.runtime import to_device
from stages.train.targets import Targets


def classify_step(
    device: torch.device, *, label_smoothing: float = 0.0, targets: Targets | None = None
) -> Callable[..., tuple[Step, Any]]:
    """A stateless step for heads over stored features: feature batch -> cross-entropy; with ``targets``
    (``data.targets``) the sum of each target's loss, and the first target's logits and labels."""

    def step(model: nn.Module, batch: dict[str, Any], state: Any) -> tuple[Step, Any]:
        feats, labels = to_device(batch, device)
        logits = model(feats)  # [B, C]
        if labels.numel() == 0:  # every clip of the batch was a damaged video left out (data.integrity=skip)
            return Step(logits.sum() * 0.0, logits, labels), state
        if targets is not None:
            loss = targets.loss(logits, labels, label_smoothing=label_smoothing)
            return Step(loss, *targets.lead(logits, labels)), state
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        return Step(loss, logits, labels), state

    return step
