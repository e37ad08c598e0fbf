"""Backbone and head as one module: what the end-to-end path trains, and what its checkpoints hold.

    feats["pixels"] [B, T, 3, S, S] (normalised; any T, any S that is a multiple of the patch)
      --backbone.forward_tensors(head.inputs)--> {name: [B, T, *shape]}  (pos-emb resized to S)
      --head--> logits [B, C]                                            (temporal pos-emb resized to T)

The head is any registered stage-two head; it is built against the tensors the live backbone can give
(every block's tokens, CLS and q/k, the final embedding) at the full crop, and reads the ones it names in
``head.inputs``. The input is a dict like a stage-two feature batch, so stage two's step function and
evaluation drive this module unchanged.

Checkpoint keys: ``backbone.model.*`` is the ViT's own state dict (what ``stages.models.weights``
reads back for ``stages.extract``), ``head.*`` the head's (what ``head.init_from`` of stage two reads).
"""

from __future__ import annotations

import torch
from torch import nn

from stages.core.errors import ConfigError
from stages.models import Backbone, TensorRequest
from stages.train.heads import Head

BACKBONE_PREFIX = "backbone.model."  # checkpoint keys of the ViT (stages/models/weights.py knows it too)
HEAD_PREFIX = "head."  # checkpoint keys of the head (stages/train/checks.py knows it too)


def available_tensors(backbone: Backbone, size: int) -> dict[str, tuple[int, ...]]:
    """Per-frame shape of every tensor the backbone can give at ``size`` px, by store name."""
    depth = int(backbone.spec["depth"])
    kinds = ("tokens", "cls") + (() if backbone.taps.qk_unsupported else ("q", "k"))
    names = ["embed.tokens", "embed.cls", "final.cls"] + [f"b{i}.{k}" for i in range(depth) for k in kinds]
    return backbone.output_shapes([TensorRequest.from_name(n) for n in names], size)


def grid_dependent(inputs: list[str]) -> list[str]:
    """The inputs whose per-frame shape changes with the patch grid (token and q/k tensors)."""
    return [n for n in inputs if n.rpartition(".")[2] in ("tokens", "q", "k")]


def check_head_takes(
    head: Head, name: str, *, frames: set[int], crops: set[int], full: tuple[int, int]
) -> None:
    """Refuse, before training, a head that cannot take the schedule's frame counts or crop sizes."""
    problems = []
    if getattr(head, "recurrent", False):
        problems.append(
            f"head {name!r} learns from consecutive chunks of whole videos in stream order (a memory "
            "head): train it in stage two on dense features; the end-to-end path trains clip heads"
        )
    other_frames = sorted(frames - {full[0]})
    if other_frames and not getattr(head, "variable_frames", False):
        problems.append(
            f"head {name!r} cannot take clips of other lengths than the {full[0]} frames it is built for, "
            f"but the schedule has {other_frames}; use multigrid long factors with t = 1, turn "
            "multigrid.long_cycle off, or use a head that resizes its temporal embedding (vivit_fe, evl)"
        )
    grid_inputs = grid_dependent(list(head.inputs))
    other_crops = sorted(crops - {full[1]})
    if other_crops and grid_inputs and not getattr(head, "variable_grid", False):
        problems.append(
            f"head {name!r} reads {grid_inputs}, whose patch grid changes with the crop, and cannot take "
            f"crops other than {full[1]} px, but the schedule has {other_crops}; turn multigrid.short_cycle "
            "off and use long factors with s = 1, or a head option that allows it (evl: cross_frame=false)"
        )
    if problems:
        raise ConfigError(problems, source=f"(head {name} under the multigrid schedule)")


class E2EModel(nn.Module):
    """A trainable backbone (all or the last N blocks) under any registered head."""

    def __init__(self, backbone: Backbone, head: Head, *, bf16: bool = True) -> None:
        super().__init__()
        self.backbone, self.head, self.bf16 = backbone, head, bf16
        self.requests = [TensorRequest.from_name(n) for n in head.inputs]

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = feats["pixels"]  # [B, T, 3, S, S]
        out = self.backbone.forward_tensors(pixels, self.requests, bf16=self.bf16)  # {name: [B, T, *shape]}
        return self.head(out)  # [B, C]
