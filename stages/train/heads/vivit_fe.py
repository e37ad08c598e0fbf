"""``vivit_fe``: ViViT factorised-encoder temporal transformer over frozen per-frame CLS vectors, with the
compact adapter of Gowda, Arnab, Huang 2023, "Optimizing ViViT Training" (arXiv 2306.04822): the
temporal half of ViViT's factorised encoder (Arnab et al. 2021, Model 2) trained over a frozen spatial one.

    feats[feature] [B, T, e] --adapter--> [B, T, e] --Linear(e, dim) if e != dim--> [B, T, dim]
      --prepend CLS [B, 1, dim], + pos [1, 1+T, dim]--> [B, 1+T, dim]
      --depth x pre-LN block (MHA, MLP-GELU)--> --LN--> CLS [B, dim] --Dropout--> --Linear (zero)--> [B, C]

Adapters (each the identity at initialisation, so a temporal transformer trained without one sees
exactly the features it was trained on):
  ``mlp``   (option A): x + Linear(d/4, e)(GELU(Linear(e, d/4)(LN(x)))), output layer zero-initialised;
  ``query`` (option B): x + out(MHA(query, LN(patches))), one learned query per frame over that frame's
            patch tokens ``[B*T, P, d]``, output projection zero-initialised;
  ``none``.
As in scenic's ViViT-FE: temporal CLS zero-initialised, position embedding N(0, 0.02), classifier
weight and bias zero. Training on more frames than a checkpoint saw: :meth:`ViViTFEHead.load_from`
copies every weight and interpolates the temporal position embedding in 1-D (CLS slot kept apart),
like scenic's ``interpolate_1d_positional_embeddings``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from stages.core.errors import CheckpointError, ConfigError, StoreMismatchError
from stages.models.posemb import interpolate_temporal_pos
from stages.train.heads import HEADS, blocks
from stages.train.heads.blocks import Attention, Head, PreLNBlock, pick_heads, take_cls
from store.contract import block_layers

ADAPTERS = ("mlp", "query", "none")


class NoAdapter(nn.Module):
    inputs: list[str] = []

    def forward(self, x: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return x


class MlpAdapter(nn.Module):
    """Option A: residual bottleneck MLP on each frame's vector, identity at init (zero output layer)."""

    inputs: list[str] = []

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = max(1, dim // 4)  # "compact": a quarter of the width (Gowda et al. 2023)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))  # [B, T, e]


class QueryAdapter(nn.Module):
    """Option B: a learned query attends over each frame's patch tokens; added to the CLS, zero at init."""

    def __init__(self, tokens_name: str, token_dim: int, out_dim: int, heads: int) -> None:
        super().__init__()
        self.tokens_name = tokens_name
        self.inputs = [tokens_name]
        self.query = nn.Parameter(torch.randn(token_dim) * 0.02)  # ViT-style small random init
        self.norm = nn.LayerNorm(token_dim)
        self.attn = Attention(token_dim, heads, out_dim=out_dim)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = feats[self.tokens_name]
        patches = tokens[:, :, 1:] if self.tokens_name.endswith(".tokens") else tokens  # [B, T, P, d]
        B, T, P, d = patches.shape
        context = self.norm(patches.reshape(B * T, P, d))  # [B*T, P, d]
        query = self.query.view(1, 1, d).expand(B * T, 1, d)  # [B*T, 1, d]
        out = self.attn(query, context).view(B, T, -1)  # [B, T, e]
        return x + out


class ViViTFEHead(Head):
    """Adapter, then a ViViT-FE temporal transformer read out at its CLS token. Clips of another length
    than ``num_frames`` use the temporal position embedding resized in 1-D (as :meth:`load_from` does)."""

    variable_frames = True
    variable_grid = True  # reads per-frame CLS vectors; adapter B attends over any number of patches

    def __init__(
        self, *, feature: str, feat_dim: int, adapter: nn.Module, num_classes: int, num_frames: int,
        dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float, input_norm: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.feature = feature
        self.input_norm = blocks.FeatureNorm(feat_dim) if input_norm else nn.Identity()
        self.num_frames = num_frames
        self.inputs = [feature, *(n for n in adapter.inputs if n != feature)]
        self.adapter = adapter
        self.proj = nn.Linear(feat_dim, dim) if dim != feat_dim else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))  # zero, as scenic's cls_TemporalTransformer
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + num_frames, dim) * 0.02)  # scenic posembed init
        self.blocks = nn.ModuleList(PreLNBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.classifier.weight)  # zero-initialised kernel (ViViT, as scenic)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x = take_cls(feats, self.feature)  # [B, T, e]
        B, T, _ = x.shape
        pos = self.pos_embed  # [1, 1+T0, dim]; other clip lengths (multigrid): resized, gradients flow
        pos = pos if T == self.num_frames else interpolate_temporal_pos(pos, T)  # [1, 1+T, dim]
        x = self.proj(self.adapter(self.input_norm(x), feats))  # [B, T, dim]
        cls = self.cls_token.expand(B, 1, -1)  # [B, 1, dim]
        x = torch.cat([cls, x.to(cls.dtype)], dim=1) + pos  # [B, 1+T, dim]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x[:, 0])  # [B, dim]
        return self.classifier(self.drop(x)).float()  # [B, C]

    @torch.no_grad()
    def load_from(self, state_dict: dict[str, torch.Tensor], *, strict: bool = True) -> dict[str, list[str]]:
        """Copy a (possibly shorter-clip) checkpoint of this head into it; returns what was done.

        ``pos_embed`` of another frame count is interpolated (:func:`interpolate_temporal_pos`). Adapter
        weights absent from the checkpoint keep their identity initialisation (Gowda et al. add the
        adapter in their second stage). With ``strict`` (default) any other missing key, unexpected key
        or shape mismatch raises :class:`CheckpointError`; without, those are skipped and reported.
        """
        own = self.state_dict()
        report: dict[str, list[str]] = {"interpolated": [], "skipped": [], "unexpected": []}
        new = {}
        for key, value in state_dict.items():
            if key not in own:
                report["unexpected"].append(key)
                continue
            if key == "pos_embed" and value.shape != own[key].shape and value.shape[2:] == own[key].shape[2:]:
                value = interpolate_temporal_pos(value.to(own[key].dtype), self.num_frames)
                report["interpolated"].append(key)
            if value.shape != own[key].shape:
                report["skipped"].append(f"{key} {tuple(value.shape)} != {tuple(own[key].shape)}")
                continue
            new[key] = value
        report["missing"] = [k for k in own if k not in state_dict]
        problems = report["unexpected"] + report["skipped"]
        problems += [k for k in report["missing"] if not k.startswith("adapter.")]
        if strict and problems:
            raise CheckpointError(
                f"checkpoint does not fit this vivit_fe head: {problems}; build the head with the "
                "checkpoint's options (feature, dim, depth, heads, adapter, classes) or pass strict=False"
            )
        self.load_state_dict(new, strict=False)
        return report


def _tokens_name(tensors: dict[str, tuple[int, ...]], tokens_layer: str | None) -> str:
    """The patch-token tensor adapter B reads: ``tokens_layer`` ("b11", "b11.tokens", "b11.pooled")."""
    if tokens_layer is None:
        layers = block_layers(tensors, "tokens")
        if not layers:
            raise StoreMismatchError(
                f"vivit_fe adapter='query' needs a frame's patch tokens ('b*.tokens') but the store holds "
                f"{sorted(tensors)}; extract with b{{depth-1}}.tokens, or set head.options.adapter=mlp"
            )
        return f"b{layers[-1]}.tokens"
    name = tokens_layer if "." in tokens_layer else f"{tokens_layer}.tokens"
    if name not in tensors or name.rpartition(".")[2] not in ("tokens", "pooled"):
        raise StoreMismatchError(
            f"head.options.tokens_layer={tokens_layer!r}: {name!r} is not a stored '*.tokens' or '*.pooled' "
            f"tensor (store holds {sorted(tensors)}); extract it, or unset head.options.tokens_layer "
            "(deepest b*.tokens)"
        )
    return name


def _adapter(kind: str, tensors: dict, backbone: dict, feat_dim: int, tokens_layer: str | None) -> nn.Module:
    if kind == "mlp":
        return MlpAdapter(feat_dim)
    if kind == "query":
        name = _tokens_name(tensors, tokens_layer)
        token_dim = int(tensors[name][-1])
        heads = pick_heads(token_dim, None, int(backbone.get("heads", 1)), "adapter heads")
        return QueryAdapter(name, token_dim, feat_dim, heads)
    if kind == "none":
        return NoAdapter()
    raise ConfigError(f"head.options.adapter={kind!r} is unknown; expected one of {list(ADAPTERS)}")


@HEADS.register("vivit_fe")
def build_vivit_fe(
    *,
    tensors: dict[str, tuple[int, ...]],
    backbone: dict[str, Any],
    num_classes: int,
    num_frames: int,
    frozen: dict[str, np.ndarray] | None = None,
    feature: str | None = None,  # None: final.cls, else the deepest CLS (ViViT-FE reads the spatial CLS)
    dim: int | None = None,  # None: the feature width, no projection needed
    depth: int = 4,  # ViViT-B/L FE temporal depth on K400/EK/SSv2 (scenic configs)
    heads: int | None = None,  # None: largest divisor of dim up to 4 (small widths in a light head)
    mlp_ratio: float = 4.0,  # ViT standard
    dropout: float = 0.0,  # released ViViT configs use 0
    adapter: str = "mlp",  # option A, the compact adapter (Gowda et al. 2023)
    tokens_layer: str | None = None,  # None: the deepest stored b*.tokens (the most semantic patches)
    input_norm: bool = False,  # standardise per-frame features over the batch (weak/random backbones)
) -> ViViTFEHead:
    """Build the ViViT-FE temporal head.

    Args:
        tensors, backbone, num_classes, num_frames, frozen: the common head contract (frozen unused).
        feature: per-frame CLS source, as for ``linear`` (default ``final.cls``, else deepest CLS).
        dim: temporal width; default the feature width (else a Linear projection after the adapter).
        depth: temporal transformer blocks.
        heads: attention heads; default the largest divisor of ``dim`` up to 4.
        mlp_ratio: MLP hidden width / ``dim``.
        dropout: dropout after attention and MLP, and before the classifier.
        adapter: ``"mlp"`` (A), ``"query"`` (B, needs patch tokens) or ``"none"``.
        tokens_layer: adapter B's tokens ("b11", "b11.tokens" or "b11.pooled"); default deepest b*.tokens.
        input_norm: BatchNorm without affine on the per-frame features before the adapter (not in the
            paper: frozen CLIP features need none; it helps random-init test backbones train quickly).
    """
    name, feat_dim = blocks.resolve_cls_feature(tensors, feature)
    dim = dim or feat_dim
    heads = pick_heads(dim, heads, 4, "head.options.heads")
    if num_frames < 1 or depth < 0:
        raise ConfigError(f"need num_frames >= 1 and head.options.depth >= 0, got {num_frames} and {depth}")
    return ViViTFEHead(
        feature=name, feat_dim=feat_dim, adapter=_adapter(adapter, tensors, backbone, feat_dim, tokens_layer),
        num_classes=num_classes, num_frames=num_frames, dim=dim, depth=depth, heads=heads,
        mlp_ratio=mlp_ratio, dropout=dropout, input_norm=input_norm,
    )  # fmt: skip
