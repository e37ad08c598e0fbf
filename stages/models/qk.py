r"""Recompute a ViT block's attention queries and keys from its input residual stream.

EVL's cross-frame attention needs the backbone's own q and k of each decoder layer's block. Storing them
costs 2 x L x d values per frame and layer; storing the block's input residual stream (which the decoder
needs anyway one layer down) and recomputing q/k here with the frozen LN1 and projection weights costs
nothing extra on disk and is exact up to the storage dtype (the residual-input rule of
``store/contract.py``).

    x [N, L, d] --LN1(w, b, eps)--> h [N, L, d] --h @ Wq^T + bq--> q [N, L, H, Dh]
                                               \--h @ Wk^T + bk--> k [N, L, H, Dh]

Weights follow ``torch.nn.Linear`` layout: ``[out_features, in_features]``. q and k are returned
unscaled (the 1/sqrt(Dh) factor belongs to the attention product), as the backbone computes them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from store.contract import QK_PARTS, frozen_key


def qk_from_residual(
    x: torch.Tensor,
    *,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor | None,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor | None,
    num_heads: int,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k of shape [..., L, H, Dh] from a block's input ``x`` of shape [..., L, d], computed in fp32."""
    d = x.shape[-1]
    if d % num_heads:
        raise ValueError(f"width {d} is not divisible by num_heads={num_heads}")
    with torch.autocast(x.device.type, enabled=False):  # fp32 even inside a bf16 autocast region
        h = F.layer_norm(x.float(), (d,), ln_weight.float(), ln_bias.float(), eps)  # [..., L, d]
        q = F.linear(h, q_weight.float(), None if q_bias is None else q_bias.float())  # [..., L, d]
        k = F.linear(h, k_weight.float(), None if k_bias is None else k_bias.float())  # [..., L, d]
    shape = (*x.shape[:-1], num_heads, d // num_heads)
    return q.reshape(shape), k.reshape(shape)  # [..., L, H, Dh] each


class FrozenQK(nn.Module):
    """Block l's frozen LN1 and q/k projections (non-persistent buffers), recomputing q/k from its input."""

    def __init__(self, layer: int, frozen: dict[str, np.ndarray], heads: int, eps: float) -> None:
        super().__init__()
        self.heads, self.eps = heads, eps
        for part in QK_PARTS:
            value = frozen.get(frozen_key(layer, part))
            tensor = None if value is None else torch.as_tensor(np.asarray(value, dtype=np.float32))
            self.register_buffer(part.replace(".", "_"), tensor, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # exact fp32 recompute, even under autocast
            return qk_from_residual(
                x.float(), ln_weight=self.ln_1_weight, ln_bias=self.ln_1_bias,
                q_weight=self.q_weight, q_bias=self.q_bias, k_weight=self.k_weight, k_bias=self.k_bias,
                num_heads=self.heads, eps=self.eps,
            )  # fmt: skip
