"""``linear``: the baseline head, a linear probe on the frame-averaged CLS vector.

    feats[feature] [B, T, d]  (or token 0 of [B, T, L, d])
      --mean over T--> [B, d] --Dropout--> --Linear(d, C)--> logits [B, C]

The usual frozen-feature baseline (CLIP-style linear probe averaged over frames); it sees no temporal
order, so it bounds from below what the temporal heads (``vivit_fe``, ``evl``) add.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stages.train.heads import HEADS
from stages.train.heads.blocks import FeatureNorm, Head, resolve_cls_feature, take_cls


class LinearHead(Head):
    """Mean over frames of one CLS vector, then a linear classifier."""

    variable_frames = True  # a mean over any number of frames
    variable_grid = True  # token 0 (the CLS) of any grid

    def __init__(
        self, feature: str, dim: int, num_classes: int, dropout: float, input_norm: bool = False
    ) -> None:
        super().__init__()
        self.feature = feature
        self.norm = FeatureNorm(dim) if input_norm else nn.Identity()
        self.inputs = [feature]
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x = take_cls(feats, self.feature).mean(dim=1)  # [B, d]
        return self.classifier(self.drop(self.norm(x))).float()  # [B, C]


@HEADS.register("linear")
def build_linear(
    *,
    tensors: dict[str, tuple[int, ...]],
    backbone: dict,
    num_classes: int,
    num_frames: int,
    frozen: dict[str, np.ndarray] | None = None,
    feature: str | None = None,  # None: final.cls, else the deepest CLS (the usual linear probe)
    dropout: float = 0.0,  # a linear probe rarely needs more; raise it for tiny data sets
    input_norm: bool = False,  # standardise features over the batch first (MAE's linear probe)
) -> LinearHead:
    """Build the linear probe.

    Args:
        tensors: per-frame shape of every stored tensor.
        backbone: the store's backbone spec (unused).
        num_classes: number of output logits.
        num_frames: frames per clip (unused: the mean works for any T).
        frozen: frozen backbone weights (unused).
        feature: the CLS source: a ``*.cls`` or ``*.tokens`` store name; default ``final.cls``, else the
            deepest ``b*.cls``, else token 0 of the deepest ``b*.tokens``.
        dropout: dropout on the averaged vector.
        input_norm: BatchNorm without affine on the averaged vector (helps weak or random backbones).
    """
    name, dim = resolve_cls_feature(tensors, feature)
    return LinearHead(name, dim, num_classes, dropout, input_norm)
