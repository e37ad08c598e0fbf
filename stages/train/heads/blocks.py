"""Building blocks shared by the stage-two heads: the head base class, store-name lookups, attention,
MLP, pre-LN transformer block.

Store tensor names are ``"{layer}.{kind}"`` (``"b11.tokens"``, ``"final.cls"``...; the grammar is
``store/contract.py``). Heads receive ``tensors``, the per-frame shape of every stored tensor, and
pick what they read with the helpers below, so every head resolves names the same way.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import ConfigError, StoreMismatchError
from store.contract import block_layers


class Head(nn.Module, abc.ABC):
    """A stage-two head: reads ``inputs`` from a feature dict, returns logits ``[B, num_classes]``."""

    inputs: list[str]
    variable_frames: bool = False  # takes clips of other lengths than built for (the e2e path checks)
    variable_grid: bool = False  # takes token tensors of other patch grids (multigrid's smaller crops)

    @abc.abstractmethod
    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, num_classes]`` from ``feats`` (store tensor name -> ``[B, T, *shape]``)."""


# ----------------------------------------------------------------------------------------- store names


def resolve_cls_feature(tensors: dict[str, tuple[int, ...]], feature: str | None) -> tuple[str, int]:
    """The tensor holding the per-frame CLS vector, and its width.

    ``feature`` may name a ``*.cls`` tensor (used as is) or a ``*.tokens`` tensor (its token 0 is the
    CLS). ``None`` picks ``final.cls`` if stored, else the deepest ``b*.cls``, else the deepest
    ``b*.tokens``.
    """
    if feature is None:
        if "final.cls" in tensors:
            feature = "final.cls"
        elif cls_layers := block_layers(tensors, "cls"):
            feature = f"b{cls_layers[-1]}.cls"
        elif token_layers := block_layers(tensors, "tokens"):
            feature = f"b{token_layers[-1]}.tokens"
        else:
            raise StoreMismatchError(
                f"the head needs a per-frame CLS vector but the store holds none of 'final.cls', 'b*.cls', "
                f"'b*.tokens' (it holds {sorted(tensors)}); extract with e.g. tensors=[final.cls] "
                "or b{depth-1}.tokens"
            )
    kind = feature.rpartition(".")[2]
    if kind not in ("cls", "tokens"):
        raise ConfigError(f"head.options.feature={feature!r} is not a '*.cls' or '*.tokens' tensor name")
    if feature not in tensors:
        raise StoreMismatchError(
            f"head.options.feature={feature!r} is not in the store (it holds {sorted(tensors)}); extract it, "
            "or set head.options.feature to a stored '*.cls' / '*.tokens' tensor (or leave it unset for the "
            "default)"
        )
    return feature, int(tensors[feature][-1])


def take_cls(feats: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The per-frame CLS vectors ``[B, T, d]`` from a ``*.cls`` ``[B, T, d]`` or ``*.tokens`` tensor."""
    x = feats[name]
    return x[:, :, 0] if name.endswith(".tokens") else x  # [B, T, d]


def pick_heads(dim: int, heads: int | None, default: int, what: str) -> int:
    """``heads`` if given (must divide ``dim``), else the largest divisor of ``dim`` up to ``default``."""
    if heads is None:
        return max(h for h in range(1, max(default, 1) + 1) if dim % h == 0)
    if heads < 1 or dim % heads:
        raise ConfigError(f"{what}={heads} must be a positive divisor of the width {dim}")
    return heads


# ----------------------------------------------------------------------------------------- layers


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation CLIP (and EVL's decoder) uses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation {name!r} is unknown; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections; ``kv_dim`` lets keys come from another width.

    ``forward(x, context)`` attends from ``x`` [N, Lq, dim] over ``context`` [N, Lk, kv_dim] (``x`` itself
    when ``context`` is None) and returns [N, Lq, out_dim].
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, out_dim: int | None = None) -> None:
        super().__init__()
        kv_dim = kv_dim or dim
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, out_dim or dim)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        N, Lq, D = x.shape
        Lk, H = context.shape[1], self.heads
        q = self.q_proj(x).view(N, Lq, H, D // H).transpose(1, 2)  # [N, H, Lq, Dh]
        k = self.k_proj(context).view(N, Lk, H, D // H).transpose(1, 2)  # [N, H, Lk, Dh]
        v = self.v_proj(context).view(N, Lk, H, D // H).transpose(1, 2)  # [N, H, Lk, Dh]
        out = F.scaled_dot_product_attention(q, k, v)  # [N, H, Lq, Dh]
        out = out.transpose(1, 2).reshape(N, Lq, D)  # [N, Lq, D]
        return self.out_proj(out)


class Mlp(nn.Module):
    """``fc2(dropout(act(fc1(x))))``; Xavier-uniform weights, biases N(0, 1e-6) (ViT / EVL init)."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        for lin in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.normal_(lin.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class PreLNBlock(nn.Module):
    """Pre-LN transformer encoder block: ``x + drop(MHA(LN(x)))`` then ``x + drop(MLP(LN(x)))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), "gelu")
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.drop(self.mlp(self.ln_2(x)))


class FeatureNorm(nn.Module):
    """Standardise frozen features over the batch: BatchNorm without affine parameters (MAE's linear-probe
    practice). A frozen backbone's per-video differences can be a few percent of the features' magnitude
    (random-init or poorly matched backbones); standardising lets a small head use them within a short
    schedule. Works on any leading shape: [..., d] -> [..., d]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).float()  # [N, d]
        if self.training and flat.shape[0] < 2:  # a last batch of one: no batch statistics to take
            return F.batch_norm(
                flat, self.bn.running_mean, self.bn.running_var, training=False, eps=self.bn.eps
            ).reshape(shape)
        return self.bn(flat).reshape(shape)  # [..., d]
