"""``evl``: EVL's transformer decoder over the last K blocks' unpooled tokens, with its three local
temporal modules (Lin et al., "Frozen CLIP Models are Efficient Video Learners", ECCV 2022: the decoder,
the three local temporal modules, the prediction from the decoder query).

    for decoder layer i = 0..K-1, backbone block l = i-th of the last K stored blocks (shallow -> deep):
      F = feats["b{l}.tokens"] [B, T, L, d]
        --F + conv_T(F)--> (depthwise Conv1d over T, every token position)       [B, T, L, d]
        --F + P_T-->       (temporal position embedding [T, d], broadcast over L)  [B, T, L, d]
        --F + M-->         (cross-frame attention from block l's q/k, patches only) [B, T, L, d]
        --flatten--> [B, T*L, d]
      x [B, 1, dim] <- x + MHA(LN(x), LN(F), LN(F));  x <- x + MLP(LN(x))
    x (a learned query, zero at init) --LN--> --Dropout--> --Linear--> logits [B, C]

Cross-frame attention: per frame t and patch p, ``A_prev[t] = mean_heads softmax(q_t k_{t-1}^T / sqrt(Dh))``
[P, P]; ``M_prev[t, p] = sum_k A_prev[t][p, k] W_prev[rel(p, k)]`` with ``rel`` the 2-D relative offset of
patches p and k (a table of (2g-1)^2 rows); the same with t+1 and ``W_next``. ``M_prev`` is added to
frames t >= 1, ``M_next`` to frames t <= T-2; the CLS row gets nothing.

q/k of block l come from the store (``b{l}.q``, ``b{l}.k``: ``qk_source == "stored"``) or are recomputed
from block l's stored input residual stream with the frozen LN1/Wq/Wk (``stages.models.qk``,
``"recomputed"``: the compact store, exact up to the storage dtype). Affinities are computed in fp32 even
under autocast.

Deviation from the EVL reference: there the temporal conv keeps PyTorch's default (random) init; here its
weight and bias start at zero too, so that all three temporal modules add exactly zero at initialisation
(the position embedding and the W tables are zero-initialised in the reference as well).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from stages.core.errors import ConfigError, StoreMismatchError
from stages.models.posemb import resize_rows
from stages.models.qk import FrozenQK
from stages.train.heads import HEADS
from stages.train.heads.blocks import Attention, Head, Mlp, pick_heads
from store.contract import block_layers, missing_frozen, residual_input


def relative_index(grid: int) -> torch.Tensor:
    """``rel[p, k]`` in ``[0, (2g-1)^2)``: the 2-D offset of patches p and k (row-major) as a table row."""
    ij = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1)  # [g, g, 2]
    ij = ij.reshape(grid * grid, 2)  # [P, 2]
    offset = ij[:, None, :] - ij[None, :, :] + (grid - 1)  # [P, P, 2], each in [0, 2g-2]
    return offset[..., 0] * (2 * grid - 1) + offset[..., 1]  # [P, P]


class CrossFrameAttention(nn.Module):
    """EVL's temporal cross-frame attention; the W tables start at zero."""

    def __init__(self, width: int, grid: int) -> None:
        super().__init__()
        rows = (2 * grid - 1) ** 2
        self.w_prev = nn.Parameter(torch.zeros(rows, width))
        self.w_next = nn.Parameter(torch.zeros(rows, width))
        self.register_buffer("rel", relative_index(grid), persistent=False)

    def motion(self, q: torch.Tensor, k: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``sum_k A[p, k] table[rel(p, k)]`` for patch q/k ``[B, S, P, H, Dh]`` -> ``[B, S, P, d]``."""
        with torch.autocast(q.device.type, enabled=False):
            logits = torch.einsum("bsphc,bskhc->bshpk", q.float(), k.float()) * q.shape[-1] ** -0.5
            affinity = logits.softmax(dim=-1).mean(dim=2)  # [B, S, P, P], averaged over heads
        return torch.einsum("bspk,pkd->bspd", affinity, table[self.rel])  # [B, S, P, d]

    def forward(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q, k = q[:, :, 1:], k[:, :, 1:]  # [B, T, P, H, Dh], CLS dropped
        delta = torch.zeros_like(x)  # [B, T, L, d]
        delta[:, 1:, 1:] += self.motion(q[:, 1:], k[:, :-1], self.w_prev)  # frame t looks back at t-1
        delta[:, :-1, 1:] += self.motion(q[:, :-1], k[:, 1:], self.w_next)  # frame t looks ahead to t+1
        return x + delta


class TemporalModules(nn.Module):
    """Depthwise temporal conv, temporal position embedding, cross-frame attention (each optional)."""

    def __init__(self, width: int, num_frames: int, grid: int, *, conv: bool, pos: bool, cross: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, 3, padding=1, groups=width) if conv else None
        if self.conv is not None:  # zero, unlike the reference: see the module docstring
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)
        self.pos = nn.Parameter(torch.zeros(num_frames, width)) if pos else None
        self.cross = CrossFrameAttention(width, grid) if cross else None

    def forward(self, x: torch.Tensor, q: torch.Tensor | None, k: torch.Tensor | None) -> torch.Tensor:
        B, T, L, d = x.shape
        if self.conv is not None:
            y = x.permute(0, 2, 3, 1).reshape(B * L, d, T)  # [B*L, d, T]
            y = self.conv(y).view(B, L, d, T).permute(0, 3, 1, 2)  # [B, T, L, d]
            x = x + y
        if self.pos is not None:  # other clip lengths (multigrid): the table resized in 1-D
            pos = self.pos if T == self.pos.shape[0] else resize_rows(self.pos, T)  # [T, d]
            x = x + pos.view(T, 1, d)  # [B, T, L, d]
        if self.cross is not None:
            x = self.cross(x, q, k)  # [B, T, L, d]
        return x


class DecoderLayer(nn.Module):
    """``x + MHA(LN(x), LN(F), LN(F))`` then ``x + MLP(LN(x))`` (the EVL decoder layer)."""

    def __init__(self, dim: int, width: int, heads: int, mlp_ratio: float, dropout: float, act: str) -> None:
        super().__init__()
        self.ln_query = nn.LayerNorm(dim)
        self.ln_memory = nn.LayerNorm(width)
        self.attn = Attention(dim, heads, kv_dim=width)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act, dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_query(x), self.ln_memory(memory))  # [B, 1, dim]
        return x + self.mlp(self.ln_mlp(x))


class EVLHead(Head):
    """EVL decoder; build it with :func:`build_evl`. Clips of another length than ``num_frames`` use the
    temporal position table resized in 1-D; other patch grids only without cross-frame attention (its
    relative-offset tables are built for one grid)."""

    variable_frames = True

    def __init__(
        self, *, layers: list[int], qk_plan: list[tuple[str, ...] | None], frozen_qk: dict[str, FrozenQK],
        width: int, grid: int, num_frames: int, num_classes: int, dim: int, heads: int, mlp_ratio: float,
        dropout: float, activation: str, temporal_conv: bool, temporal_pos: bool, cross_frame: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.layers, self.num_frames, self.qk_plan = layers, num_frames, qk_plan
        self.variable_grid = not cross_frame
        self.token_names = [f"b{layer}.tokens" for layer in layers]
        kinds = {plan[0] for plan in qk_plan if plan is not None}
        self.qk_source = None if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"
        names = self.token_names + [n for plan in qk_plan if plan is not None for n in plan[1:]]
        self.inputs = list(dict.fromkeys(names))  # ordered, without duplicates
        self.frozen_qk = nn.ModuleDict(frozen_qk)
        self.temporal = nn.ModuleList(
            TemporalModules(width, num_frames, grid, conv=temporal_conv, pos=temporal_pos, cross=cross_frame)
            for _ in layers
        )
        self.query = nn.Parameter(torch.zeros(dim))  # zero, as the reference's cls_token
        self.decoder = nn.ModuleList(
            DecoderLayer(dim, width, heads, mlp_ratio, dropout, activation) for _ in layers
        )
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def qk(self, feats: dict[str, torch.Tensor], i: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Block q/k ``[B, T, L, H, Dh]`` of decoder layer ``i``; (None, None) without cross-frame."""
        plan = self.qk_plan[i]
        if plan is None:
            return None, None
        if plan[0] == "stored":
            return feats[plan[1]], feats[plan[2]]
        return self.frozen_qk[str(i)](feats[plan[1]])

    def memory_tokens(self, feats: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        """Decoder layer ``i``'s keys/values ``[B, T, L, d]``: block tokens after the temporal modules."""
        tokens = feats[self.token_names[i]]  # [B, T, L, d]
        return self.temporal[i](tokens, *self.qk(feats, i))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        B = feats[self.token_names[0]].shape[0]
        x = self.query.view(1, 1, -1).expand(B, 1, -1)  # [B, 1, dim]
        for i, layer in enumerate(self.decoder):
            memory = self.memory_tokens(feats, i)  # [B, T, L, d]
            x = layer(x, memory.flatten(1, 2))  # memory [B, T*L, d] -> x [B, 1, dim]
        return self.classifier(self.drop(self.norm(x[:, 0]))).float()  # [B, C]


def _choose_layers(tensors: dict, backbone: dict, layers: int) -> list[int]:
    """The deepest ``layers`` blocks whose tokens are stored, shallow to deep."""
    if layers < 1:
        raise ConfigError(f"head.options.layers={layers} must be >= 1")
    stored = block_layers(tensors, "tokens")
    if len(stored) >= layers:
        return stored[-layers:]
    depth = int(backbone.get("depth", stored[-1] + 1 if stored else layers))
    if layers > depth:
        raise StoreMismatchError(
            f"evl head.options.layers={layers} exceeds the backbone's {depth} blocks; "
            f"set head.options.layers={len(stored) or 1}"
        )
    wanted = [f"b{layer}.tokens" for layer in range(max(0, depth - layers), depth)]
    raise StoreMismatchError(
        f"evl with head.options.layers={layers} needs the tokens of the last {layers} blocks ({wanted}); "
        f"the store has {[f'b{layer}.tokens' for layer in stored] or 'no b*.tokens'} (missing "
        f"{[n for n in wanted if n not in tensors]}). Extract with these tensors, "
        f"or set head.options.layers={len(stored) or 1}"
    )


def _plan_qk(layer: int, tensors: dict, frozen: dict | None) -> tuple[str, ...] | str:
    """How block ``layer``'s q/k are obtained: ("stored", q, k) | ("recomputed", residual); else a reason."""
    q, k = f"b{layer}.q", f"b{layer}.k"
    if q in tensors and k in tensors:
        return ("stored", q, k)
    residual = residual_input(layer)
    weights = missing_frozen(layer, frozen or {})
    if residual in tensors and not weights:
        return ("recomputed", residual)
    lacking = [n for n in (q, k, residual) if n not in tensors] + [f"frozen {w}" for w in weights]
    return (
        f"block {layer}: neither {q!r}+{k!r} nor {residual!r} with frozen weights b{layer}.ln_1.*, "
        f"b{layer}.q.*, b{layer}.k.* (missing {lacking})"
    )


def _plan_all_qk(chosen: list[int], tensors: dict, frozen: dict | None) -> list[tuple[str, ...] | None]:
    """One q/k plan per decoder layer, or a StoreMismatchError naming every block that lacks them."""
    found = [_plan_qk(layer, tensors, frozen) for layer in chosen]
    problems = [p for p in found if isinstance(p, str)]
    if problems:
        raise StoreMismatchError(
            "evl cross_frame attention needs each decoder block's attention q/k: "
            + "; ".join(problems)
            + ". Extract with tensors b{l}.q and b{l}.k (exact, larger), or with the residual inputs "
            "b{l-1}.tokens (embed.tokens for l=0) plus the frozen q/k weights (compact), "
            "or set head.options.cross_frame=false"
        )
    return found  # type: ignore[return-value]


@HEADS.register("evl")
def build_evl(
    *,
    tensors: dict[str, tuple[int, ...]],
    backbone: dict[str, Any],
    num_classes: int,
    num_frames: int,
    frozen: dict[str, np.ndarray] | None = None,
    layers: int = 4,  # K = 4 in every EVL K400 recipe (12 for SSv2)
    dim: int | None = None,  # None: the backbone width, as EVL
    heads: int | None = None,  # None: the backbone's heads, as EVL
    mlp_ratio: float = 4.0,  # EVL decoder MLP
    dropout: float = 0.5,  # EVL: before fc2 of the decoder MLP and before the classifier
    activation: str = "quick_gelu",  # EVL decoder uses CLIP's QuickGELU
    temporal_conv: bool = True,  # all three temporal modules on, as in EVL (each has an ablation switch)
    temporal_pos: bool = True,
    cross_frame: bool = True,
) -> EVLHead:
    """Build the EVL decoder head.

    Args:
        tensors, backbone, num_classes, num_frames, frozen: the common head contract; ``frozen`` supplies
            ``b{l}.ln_1.*``, ``b{l}.q.*``, ``b{l}.k.*`` when q/k are recomputed rather than stored.
        layers: K, the number of decoder layers = deepest stored ``b*.tokens`` blocks used.
        dim: decoder width; default the backbone width (keys/values keep the token width).
        heads: decoder heads; default the backbone's heads.
        mlp_ratio, dropout, activation ("quick_gelu" | "gelu"): decoder MLP.
        temporal_conv, temporal_pos, cross_frame: switch each temporal module (for ablations).
    """
    chosen = _choose_layers(tensors, backbone, layers)
    L, width = (int(s) for s in tensors[f"b{chosen[-1]}.tokens"])
    grid = int(backbone.get("grid", round((L - 1) ** 0.5)))
    if cross_frame and L != 1 + grid * grid:
        raise StoreMismatchError(
            f"evl cross_frame needs tokens = 1 CLS + grid^2 patches, but b{chosen[-1]}.tokens has {L} tokens "
            f"for grid {grid}; store unpooled tokens, or set head.options.cross_frame=false"
        )
    plans = _plan_all_qk(chosen, tensors, frozen) if cross_frame else [None] * len(chosen)
    eps = float(backbone.get("ln_eps", 1e-5))
    n_heads = int(backbone.get("heads", 1))
    frozen_qk = {
        str(i): FrozenQK(layer, frozen or {}, n_heads, eps)
        for i, (layer, plan) in enumerate(zip(chosen, plans, strict=True))
        if plan is not None and plan[0] == "recomputed"
    }
    dim = dim or int(backbone.get("width", width))
    return EVLHead(
        layers=chosen, qk_plan=plans, frozen_qk=frozen_qk, width=width, grid=grid, num_frames=num_frames,
        num_classes=num_classes, dim=dim, heads=pick_heads(dim, heads, n_heads, "head.options.heads"),
        mlp_ratio=mlp_ratio, dropout=dropout, activation=activation, temporal_conv=temporal_conv,
        temporal_pos=temporal_pos, cross_frame=cross_frame,
    )  # fmt: skip
