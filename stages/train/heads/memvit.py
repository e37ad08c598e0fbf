"""``memvit``: a MeMViT-style memory head over consecutive chunks of a video's stored per-frame features
(Wu, Li et al., "MeMViT: Memory-Augmented Multiscale Vision Transformer for Efficient Long-Term Video
Recognition", CVPR 2022, arXiv 2201.08383, Sec. 3 "memory attention" and "pipelined compression";
reference/methods.md §3 and §5.2 for the frozen-feature adaptation).

    feats[feature] [B, T, d] (per-frame CLS, P = 1) or [B, T, P, d] (pooled p x p grid, P = p*p)
      --input_norm?--> --Linear(d, dim) if d != dim--> + pos_t [1, T, 1, dim] (+ pos_s [1, 1, P, dim])
      --flatten, prepend CLS--> x [B, Lc = 1+T*P, dim]
      --depth x block:  h = LN(x)                                      the layer input memory keeps
          memory layer:  mem = [compress(prev), entries][chunks n-1, n-1-k, ..., n-1-(M-1)k]  [B, M*Lm, dim]
                         x = x + MHA(q = h, k/v = W_k/W_v [mem ; h])   + learned bias per memory key
          other layer:   x = x + MHA(h)
          then           x = x + MLP(LN(x))
      --LN--> CLS [B, dim] --Dropout--> --Linear (zero init)--> logits [B, C]

    memory (per memory layer, per stream), carried by the caller from chunk n to chunk n+1:
      prev    [B, Lc, dim]       this chunk's h, detached, still uncompressed
      entries [B, S-1, Lm, dim]  older chunks, compressed and detached (S = 1 + (M-1)k slots in all)
      valid   [B, S]             which slots hold a chunk of the stream's current video

As in MeMViT, memory holds each layer's *input* (here LN1(x), before the K/V projection) and is projected
with the current K/V weights at every step, so gradients reach W_k/W_v through memory but never reach
earlier chunks. Compression (a learnable depthwise Conv3d over (T, H, W), kernel 2s-1, stride s, then LN;
the CLS token bypasses the pooling) is *pipelined*: the previous chunk's memory is compressed in the
current step, where it is used, so the compressor learns without back-propagation through time; older
entries stay compressed and detached. Memory keys get their own learned relative temporal positions: a
per-head bias indexed by how far back the key lies (compressed time steps before the current chunk).
A stream that starts a new video (``reset``) has its memory zeroed and masked out. Deviations from
MeMViT: a small pre-LN transformer over frozen features instead of MViTv2 blocks (§5.2); memory slots
are chunks n-1, n-1-k, ... (MeMViT's gapN takes n-N, n-2N): the newest one is always attended to, so the
compressor gets gradients for every k; scalar relative biases instead of q·R terms.

With ``memory=0`` the head has no memory parameters and is the plain pre-LN transformer; ``head(feats)``
(no memory passed) runs any head memory-free. :attr:`MemViTHead.recurrent` tells stage two to feed the
head in stream order (``stages/train/streams.py``) and to evaluate it online (``stages/train/online.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import ConfigError, StoreMismatchError
from stages.train.heads import HEADS
from stages.train.heads.blocks import Attention, FeatureNorm, Head, Mlp, pick_heads, resolve_cls_feature

Memory = dict[
    str, Any
]  # {"valid": [B, S] bool, "prev": [[B, Lc, dim]...], "entries": [[B, S-1, Lm, dim]...]}


@dataclass(frozen=True)
class MemoryShape:
    """Token geometry of one chunk and of its compressed memory (shared by every memory layer)."""

    frames: int  # T, frames per chunk
    side: int  # grid side per frame (1 for CLS features)
    length: int  # M, memory chunks attended to
    every: int  # k, one chunk in k is attended to (chunks n-1, n-1-k, ...)
    stride: tuple[int, int, int]  # compression stride (T, H, W); kernel 2s-1 per axis

    @property
    def slots(self) -> int:
        """S: chunks the memory keeps to serve its selection (the newest is held uncompressed)."""
        return 1 + (self.length - 1) * self.every

    @property
    def selected(self) -> list[int]:
        return [j * self.every for j in range(self.length)]  # slot j*k holds chunk n-1-j*k

    @property
    def compressed(self) -> tuple[int, int]:
        """(T', side') after compression: ceil(T / s_t), ceil(side / s_h)."""
        return -(-self.frames // self.stride[0]), -(-self.side // self.stride[1])

    @property
    def tokens(self) -> int:
        """Lm: tokens of one compressed chunk (its CLS plus T' x side' x side' cells)."""
        t, s = self.compressed
        return 1 + t * s * s

    @property
    def support(self) -> int:
        """Chunks one memory layer sees at once: the current one plus back to n-1-(M-1)k."""
        return 1 + (self.slots if self.length else 0)


class Compressor(nn.Module):
    """Depthwise Conv3d over (T, H, W) of a chunk's layer input, then LN; the CLS token skips the pooling.

    ``[B, 1 + T*side*side, dim] -> [B, Lm, dim]``. Initialised as an average pool, so memory starts as a
    plain pooled summary (MeMViT leaves the conv at its default random init).
    """

    def __init__(self, dim: int, shape: MemoryShape) -> None:
        super().__init__()
        st, sh, _ = shape.stride
        side = shape.side
        kernel = tuple(
            2 * s - 1 if n > 1 else 1 for s, n in zip((st, sh, sh), (shape.frames, side, side), strict=True)
        )
        stride = (st, sh if side > 1 else 1, sh if side > 1 else 1)
        self.shape, self.kernel = shape, kernel
        self.conv = nn.Conv3d(dim, dim, kernel, stride, padding=tuple(k // 2 for k in kernel), groups=dim,
                              bias=False)  # fmt: skip
        nn.init.constant_(self.conv.weight, 1.0 / math.prod(kernel))
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, _, D = h.shape
        T, side = self.shape.frames, self.shape.side
        grid = h[:, 1:].reshape(B, T, side, side, D).permute(0, 4, 1, 2, 3)  # [B, dim, T, side, side]
        pooled = self.conv(grid.to(self.conv.weight.dtype)).flatten(2).transpose(1, 2)  # [B, T'*s'*s', dim]
        return self.norm(torch.cat([h[:, :1], pooled.to(h.dtype)], dim=1))  # [B, Lm, dim]


class MemoryAttention(Attention):
    """:class:`Attention` whose keys/values may also come from memory tokens, with an additive mask.

    ``forward(h)`` is exactly the parent's; ``forward(h, memory, mask)`` attends from ``h`` [N, Lq, D] over
    ``[memory ; h]`` (both projected with this layer's W_k, W_v), ``mask`` [N, H, 1, Lm] added to the
    memory logits (learned positions, -inf on invalid slots).
    """

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, memory: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if memory is None:
            return super().forward(x)
        N, Lq, D = x.shape
        context = torch.cat([memory.to(x.dtype), x], dim=1)  # [N, Lm + Lq, D]
        Lk, H = context.shape[1], self.heads
        q = self.q_proj(x).view(N, Lq, H, D // H).transpose(1, 2)  # [N, H, Lq, Dh]
        k = self.k_proj(context).view(N, Lk, H, D // H).transpose(1, 2)  # [N, H, Lk, Dh]
        v = self.v_proj(context).view(N, Lk, H, D // H).transpose(1, 2)  # [N, H, Lk, Dh]
        mask = F.pad(mask, (0, Lq)).to(q.dtype)  # [N, H, 1, Lm + Lq]: current tokens get 0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [N, H, Lq, Dh]
        return self.out_proj(out.transpose(1, 2).reshape(N, Lq, D))  # [N, Lq, out]


class MemoryBlock(nn.Module):
    """Pre-LN block; with ``shape`` its attention also attends to the compressed memory of earlier chunks."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, shape: MemoryShape | None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = MemoryAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), "gelu")
        self.drop = nn.Dropout(dropout)
        self.shape = shape
        if shape is not None:
            self.compress = Compressor(dim, shape)
            self.mem_pos = nn.Parameter(
                nn.init.trunc_normal_(torch.empty(heads, _positions(shape)), std=0.02)
            )
            self.register_buffer("mem_pos_index", _position_index(shape), persistent=False)  # [M*Lm]

    def forward(
        self, x: torch.Tensor, prev: torch.Tensor | None = None, entries: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
        """``x`` [B, Lc, dim] -> (x, this chunk's h for memory, the entries to keep), memory when given."""
        h = self.ln_1(x)  # [B, Lc, dim]: what this layer's K/V projection reads, and what memory keeps
        if self.shape is None or prev is None:
            return self._rest(x, self.attn(h)), None, None
        s = self.shape
        slots = torch.cat([self.compress(prev)[:, None], entries.to(prev.dtype)], dim=1)  # [B, S, Lm, dim]
        memory = slots[:, s.selected].flatten(1, 2)  # [B, M*Lm, dim]
        keep = valid[:, s.selected].repeat_interleave(s.tokens, dim=1)  # [B, M*Lm]
        bias = self.mem_pos[:, self.mem_pos_index]  # [H, M*Lm]
        mask = bias[None, :, None].masked_fill(~keep[:, None, None], float("-inf"))  # [B, H, 1, M*Lm]
        x = self._rest(x, self.attn(h, memory, mask))
        return x, h.detach(), slots[:, : s.slots - 1].detach()

    def _rest(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(attended)
        return x + self.drop(self.mlp(self.ln_2(x)))


def _positions(shape: MemoryShape) -> int:
    """Entries of a memory layer's relative-position table: one per temporal distance, one per CLS slot."""
    t_c, _ = shape.compressed
    return shape.slots * t_c + shape.length


def _position_index(shape: MemoryShape) -> torch.Tensor:
    """Table index of each memory token [M*Lm]: a cell of slot j, compressed time u, lies
    (1 + j*k)*T' - u compressed steps before the current chunk; slot j's CLS token has its own entry."""
    t_c, s_c = shape.compressed
    rows = []
    for slot, j in enumerate(shape.selected):
        distance = (1 + j) * t_c - np.arange(t_c)  # [T'] in 1 .. S*T'
        cells = np.repeat(distance - 1, s_c * s_c)  # [T'*s'*s']
        rows.append(np.concatenate([[shape.slots * t_c + slot], cells]))  # [Lm]
    return torch.from_numpy(np.concatenate(rows)).long()  # [M*Lm]


class MemViTHead(Head):
    """Pre-LN temporal transformer over one chunk whose memory layers also attend to earlier chunks."""

    recurrent = True  # stage two feeds it consecutive chunks in stream order and evaluates it online

    def __init__(
        self, *, feature: str, feat_dim: int, side: int, num_classes: int, num_frames: int, dim: int,
        depth: int, heads: int, mlp_ratio: float, dropout: float, input_norm: bool,
        shape: MemoryShape | None, memory_layers: list[int],
    ) -> None:  # fmt: skip
        super().__init__()
        self.feature, self.inputs, self.side, self.num_frames = feature, [feature], side, num_frames
        self.shape, self.memory_layers = shape, memory_layers
        self.input_norm = FeatureNorm(feat_dim) if input_norm else nn.Identity()
        self.proj = nn.Linear(feat_dim, dim) if dim != feat_dim else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))  # zero, as ViViT's temporal CLS
        self.pos_t = nn.Parameter(torch.randn(1, num_frames, 1, dim) * 0.02)  # ViT-style small init
        self.pos_s = nn.Parameter(torch.randn(1, 1, side * side, dim) * 0.02) if side > 1 else None
        self.blocks = nn.ModuleList(
            MemoryBlock(dim, heads, mlp_ratio, dropout, shape if i in memory_layers else None)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.classifier.weight)  # zero-initialised classifier, as ViViT
        nn.init.zeros_(self.classifier.bias)

    @property
    def temporal_support(self) -> int:
        """Frames one memory layer sees at once (the current chunk and the memory it reaches back to)."""
        return self.num_frames * (self.shape.support if self.shape else 1)

    def forward(  # type: ignore[override]
        self, feats: dict[str, torch.Tensor], memory: Memory | None = None, reset: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, Memory]:
        """Logits [B, C] of one chunk; with ``memory`` (from :meth:`init_memory` or the previous call) also
        the memory for the next chunk. ``reset`` [B] bool: streams whose chunk starts a new video."""
        x = self._embed(feats)  # [B, Lc, dim]
        if memory is None:
            for block in self.blocks:
                x = block(x)[0]
            return self._readout(x)
        if self.shape is None:  # M = 0: nothing to remember
            for block in self.blocks:
                x = block(x)[0]
            return self._readout(x), {}
        memory = self._reset(memory, reset, x.shape[0])
        prevs, entries = [], []
        for i, block in enumerate(self.blocks):
            if block.shape is None:
                x = block(x)[0]
                continue
            m = self.memory_layers.index(i)
            x, prev, kept = block(x, memory["prev"][m], memory["entries"][m], memory["valid"])
            prevs.append(prev)
            entries.append(kept)
        valid = memory["valid"]  # [B, S]: this chunk becomes slot 0, the oldest slot is dropped
        valid = torch.cat([torch.ones_like(valid[:, :1]), valid[:, : self.shape.slots - 1]], dim=1)
        return self._readout(x), {"valid": valid, "prev": prevs, "entries": entries}

    def init_memory(self, batch: int, device: torch.device | str = "cpu") -> Memory:
        """Empty memory for ``batch`` streams: zeros, every slot invalid ({} when the head has none)."""
        if self.shape is None:
            return {}
        s, dim, lc = self.shape, self.cls_token.shape[-1], 1 + self.num_frames * self.side**2
        n = len(self.memory_layers)
        return {
            "valid": torch.zeros(batch, s.slots, dtype=torch.bool, device=device),
            "prev": [torch.zeros(batch, lc, dim, device=device) for _ in range(n)],
            "entries": [torch.zeros(batch, s.slots - 1, s.tokens, dim, device=device) for _ in range(n)],
        }

    def _reset(self, memory: Memory, reset: torch.Tensor | None, batch: int) -> Memory:
        """Streams starting a new video: memory zeroed (MeMViT's ``mask_memory``) and marked invalid."""
        if memory["valid"].shape[0] != batch:
            raise ConfigError(
                f"memory holds {memory['valid'].shape[0]} streams but the chunk batch has {batch}; pass "
                f"head.init_memory({batch}) when the number of streams changes"
            )
        if reset is None:
            return memory
        keep = ~reset.to(device=memory["valid"].device, dtype=torch.bool)  # [B]
        zero = lambda t: t * keep.view(-1, *[1] * (t.dim() - 1)).to(t.dtype)  # noqa: E731
        return {"valid": memory["valid"] & keep[:, None], "prev": [zero(p) for p in memory["prev"]],
                "entries": [zero(e) for e in memory["entries"]]}  # fmt: skip

    def _embed(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x = feats[self.feature]
        if self.side > 1:
            x = x[:, :, 1:] if self.feature.endswith(".tokens") else x  # [B, T, P, d]
        else:
            x = (x[:, :, 0] if self.feature.endswith(".tokens") else x)[:, :, None]  # [B, T, 1, d]
        B, T, P, _ = x.shape
        if T != self.num_frames:
            raise ConfigError(
                f"memvit was built for chunks of {self.num_frames} frames but got {T}; feed chunks of "
                f"data.frames={self.num_frames} rows (stages/train/streams.py cuts them)"
            )
        x = self.proj(self.input_norm(x)) + self.pos_t  # [B, T, P, dim]
        x = x if self.pos_s is None else x + self.pos_s
        cls = self.cls_token.expand(B, 1, -1)  # [B, 1, dim]
        return torch.cat([cls, x.reshape(B, T * P, -1).to(cls.dtype)], dim=1)  # [B, 1+T*P, dim]

    def _readout(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.norm(x[:, 0]))).float()  # [B, C]


def _grid_feature(tensors: dict[str, tuple[int, ...]], feature: str | None) -> tuple[str, int, int]:
    """(name, width, grid side) of the per-frame input: a ``*.pooled`` grid, or a CLS vector."""
    if feature is not None and feature.endswith(".pooled"):
        if feature not in tensors:
            raise StoreMismatchError(
                f"head.options.feature={feature!r} is not in the store (it holds {sorted(tensors)}); extract "
                "it (tensors=[b-1.pooled] pool=P), or leave head.options.feature unset for the CLS vector"
            )
        cells, width = tensors[feature][-2:]
        side = math.isqrt(cells)
        if side * side != cells:
            raise StoreMismatchError(f"{feature!r} holds {cells} cells per frame, not a square p x p grid")
        return feature, int(width), side
    name, width = resolve_cls_feature(tensors, feature)
    return name, width, 1


def _memory_shape(
    num_frames: int, side: int, memory: int, memory_every: int, compress: Any, depth: int, layers: Any
) -> tuple[MemoryShape | None, list[int]]:
    problems = []
    if memory < 0 or memory_every < 1:
        problems.append(f"head.options.memory={memory} must be >= 0 and memory_every={memory_every} >= 1")
    stride = tuple(int(s) for s in compress)
    if len(stride) != 3 or min(stride) < 1 or stride[1] != stride[2]:
        problems.append(
            f"head.options.compress={list(compress)} must be 3 strides >= 1 (T, H, W) with H = W, "
            "e.g. [4, 2, 2]"
        )
    layers = list(range(depth)) if layers is None else sorted({int(i) for i in layers})
    if any(not 0 <= i < depth for i in layers):
        problems.append(f"head.options.memory_layers={layers} must be block numbers in 0..{depth - 1}")
    if problems:
        raise ConfigError(problems)
    if memory == 0 or not layers:
        return None, []
    return MemoryShape(num_frames, side, memory, memory_every, stride), layers  # type: ignore[arg-type]


@HEADS.register("memvit")
def build_memvit(
    *,
    tensors: dict[str, tuple[int, ...]],
    backbone: dict[str, Any],
    num_classes: int,
    num_frames: int,
    frozen: dict[str, np.ndarray] | None = None,
    feature: str | None = None,  # None: final.cls, else the deepest CLS (cheapest input; a grid needs pooled)
    dim: int | None = None,  # None: the feature width, no projection needed
    depth: int = 2,  # a light head; two memory layers let memory reach two hops back (docstring)
    heads: int | None = None,  # None: largest divisor of dim up to 4 (small widths in a light head)
    mlp_ratio: float = 4.0,  # ViT standard
    dropout: float = 0.0,  # frozen features, short schedules: none needed
    input_norm: bool = False,  # standardise per-frame features over the batch (weak/random backbones)
    memory: int = 2,  # M: MeMViT's AVA configs attend to 2 memory clips (ATTN_MAX_LEN 3)
    memory_every: int = 1,  # k: every chunk; 2-3 reach further for the same cost (MeMViT gap2/gap3)
    compress: tuple[int, int, int] = (4, 2, 2),  # MeMViT's compression stride (T, H, W), kernel 2s-1
    memory_layers: list[int] | None = None,  # None: every block (MeMViT: every other of 16; ours is small)
) -> MemViTHead:
    """Build the memory head.

    Args:
        tensors, backbone, num_classes, frozen: the common head contract (backbone, frozen unused).
        num_frames: frames per chunk (``data.frames``).
        feature: per-frame input: a ``*.pooled`` grid, or a CLS source as for ``linear`` (default
            ``final.cls``, else the deepest CLS).
        dim, depth, heads, mlp_ratio, dropout: the transformer (as ``vivit_fe``).
        input_norm: BatchNorm without affine on the per-frame features (helps random-init test backbones).
        memory: M, earlier chunks each memory layer attends to; 0 = the plain head, no memory parameters.
        memory_every: k; memory chunks are n-1, n-1-k, ..., n-1-(M-1)k.
        compress: compression stride (T, H, W) of a chunk's memory; only T applies to CLS features.
        memory_layers: blocks that carry memory (default all).
    """
    name, feat_dim, side = _grid_feature(tensors, feature)
    dim = dim or feat_dim
    heads = pick_heads(dim, heads, 4, "head.options.heads")
    if num_frames < 1 or depth < 1:
        raise ConfigError(f"need num_frames >= 1 and head.options.depth >= 1, got {num_frames} and {depth}")
    shape, layers = _memory_shape(num_frames, side, memory, memory_every, compress, depth, memory_layers)
    return MemViTHead(
        feature=name, feat_dim=feat_dim, side=side, num_classes=num_classes, num_frames=num_frames, dim=dim,
        depth=depth, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout, input_norm=input_norm, shape=shape,
        memory_layers=layers,
    )  # fmt: skip
