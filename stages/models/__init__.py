"""The shared model layer: image backbones (frozen or trainable) with multi-layer outputs, q/k
recomputation from residual streams, and position-embedding interpolation.

Used by stage one (features under inference mode), stage two (q/k recomputation in the EVL head) and the
end-to-end path (a trainable backbone at multigrid sizes). Imports neither stage.

    >>> bb = build_backbone("test_timm_vit", trainable=1)                 # last block learns
    >>> out = bb.forward_tensors(torch.zeros(2, 8, 3, 16, 16), [TensorRequest("final", "cls")])
    >>> tuple(out["final.cls"].shape)                                     # 16 px: pos-emb resized
    (2, 8, 32)
"""

from stages.models.backbone import Backbone, TensorRequest
from stages.models.backbones import BACKBONES, build_backbone
from stages.models.posemb import interpolate_pos_embed, interpolate_temporal_pos
from stages.models.qk import FrozenQK, qk_from_residual

__all__ = [
    "BACKBONES",
    "Backbone",
    "FrozenQK",
    "TensorRequest",
    "build_backbone",
    "interpolate_pos_embed",
    "interpolate_temporal_pos",
    "qk_from_residual",
]
