"""The feature contract between stage one, the store and stage two, written once (torch-free).

Every stored per-frame tensor is named ``"{layer}.{kind}"``::

    layer  "embed"   the input of block 0 (patch embedding + CLS + position embedding, after ln_pre)
           "b{i}"    the residual stream after block i (0-based; a request may say b-1 for the last block)
           "final"   the model's image embedding (after its final norm and projection)
    kind   "tokens"  CLS + patch tokens      [L, d]        L = 1 + grid^2
           "cls"     the CLS token            [d]          ("final": the embedding [e])
           "pooled"  patch tokens averaged to a p x p grid  [p*p, d]
           "q", "k"  block i's own attention queries / keys  [L, H, Dh]  (unscaled, after the bias)

``embed`` holds tokens, cls and pooled; ``final`` only cls; blocks hold every kind.

The residual-input rule: block l's input is ``embed.tokens`` for l = 0, else ``b{l-1}.tokens``. A store
that holds a block's input together with that block's frozen LN1 and q/k projection weights (keys
``b{l}.ln_1.weight`` ... below, Linear layout ``[out, in]``) lets a reader recompute the block's q/k
exactly, instead of storing them (EVL's cross-frame attention needs them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("tokens", "cls", "pooled", "q", "k")
LAYER_KINDS = {"embed": ("tokens", "cls", "pooled"), "final": ("cls",)}  # blocks allow every kind
TOKEN_KINDS = ("tokens", "q", "k")  # per-frame [L, ...] with the CLS at token 0
CELL_KINDS = ("pooled",)  # per-frame [p*p, d]: patch cells only, no CLS

QK_PARTS = ("ln_1.weight", "ln_1.bias", "q.weight", "q.bias", "k.weight", "k.bias")  # per block
QK_REQUIRED = ("ln_1.weight", "ln_1.bias", "q.weight", "k.weight")  # the biases may be absent (zero)

_BLOCK = re.compile(r"^b(-?\d+)$")


@dataclass(frozen=True)
class TensorName:
    """A parsed tensor name: ``TensorName.parse("b11.tokens") == TensorName("b11", "tokens")``."""

    layer: str
    kind: str

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.kind}"

    @property
    def block(self) -> int | None:
        """The block number of a ``b{i}`` layer (negative when counted from the end), else None."""
        return block_index(self.layer)

    @classmethod
    def parse(cls, name: str) -> TensorName:
        """Split and check ``name``; a ``ValueError`` says what is wrong and gives examples."""
        layer, _, kind = str(name).rpartition(".")
        if not layer:
            raise ValueError(f"{name!r} is not '<layer>.<kind>' (e.g. b-1.tokens, final.cls, b8.q)")
        if layer not in LAYER_KINDS and block_index(layer) is None:
            raise ValueError(f"{name!r}: unknown layer {layer!r}; expected 'embed', 'b<i>' or 'final'")
        if kind not in KINDS:
            raise ValueError(f"{name!r}: unknown kind {kind!r}; expected one of {list(KINDS)}")
        if kind not in LAYER_KINDS.get(layer, KINDS):
            raise ValueError(
                f"{name!r}: kind {kind!r} is not available on layer {layer!r}; expected one of "
                f"{list(LAYER_KINDS[layer])}"
            )
        return cls(layer, kind)


def tensor_name(layer: str, kind: str) -> str:
    return f"{layer}.{kind}"


def block_index(layer: str) -> int | None:
    """``"b11"`` -> 11, ``"b-1"`` -> -1; None for ``embed``, ``final`` and anything else."""
    m = _BLOCK.match(layer)
    return int(m.group(1)) if m else None


def block_layers(names: Iterable[str], kind: str) -> list[int]:
    """Sorted block numbers ``l >= 0`` for which ``b{l}.{kind}`` is among ``names``."""
    found = set()
    for name in names:
        layer, _, k = name.rpartition(".")
        block = block_index(layer)
        if k == kind and block is not None and block >= 0:
            found.add(block)
    return sorted(found)


def residual_input(block: int) -> str:
    """The tensor name of block ``block``'s input residual stream (the residual-input rule)."""
    return "embed.tokens" if block == 0 else f"b{block - 1}.tokens"


def recomputable_blocks(names: Iterable[str], depth: int) -> list[int]:
    """Blocks whose input residual stream is among ``names`` (their q/k can be recomputed from it)."""
    names = set(names)
    return [block for block in range(depth) if residual_input(block) in names]


def frozen_key(block: int, part: str) -> str:
    """The key of one frozen weight: ``frozen_key(3, "q.weight") == "b3.q.weight"``."""
    if part not in QK_PARTS:
        raise ValueError(f"frozen weight part {part!r} is not one of {QK_PARTS}")
    return f"b{block}.{part}"


def missing_frozen(block: int, available: Iterable[str]) -> list[str]:
    """The required frozen-weight keys of ``block`` that ``available`` lacks."""
    have = set(available)
    return [key for part in QK_REQUIRED if (key := frozen_key(block, part)) not in have]


def frame_shape(
    kind: str, *, layer: str, width: int, heads: int, grid: int, embed_dim: int, pool: int | None = None
) -> tuple[int, ...]:
    """Per-frame shape of a tensor of a ViT with these geometry figures (no model needed)."""
    tokens = 1 + grid * grid
    if layer == "final":
        return (embed_dim,)
    if kind == "tokens":
        return (tokens, width)
    if kind == "cls":
        return (width,)
    if kind == "pooled":
        if pool is None:
            raise ValueError("kind 'pooled' needs pool (the p of the p x p grid)")
        return (pool * pool, width)
    if kind in ("q", "k"):
        return (tokens, heads, width // heads)
    raise ValueError(f"unknown kind {kind!r}; expected one of {list(KINDS)}")
