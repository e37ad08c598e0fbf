"""Pixel preprocessing, built once from the backbone's own spec: resize, crop, normalise.

    uint8 RGB frames [n, H, W, 3] --resize (short side -> short_side, aspect kept)--> crop size x size
        --(x / 255 - mean) / std--> float32 [n, 3, size, size]

:class:`Preprocessing` carries the figures (size, short side, mean, std, interpolation) from the backbone
spec to every place that turns frames into backbone input: stage one's decode workers, the pixel dataset of
the end-to-end path, prediction; its :meth:`Preprocessing.to_json` is what a store records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core.errors import ConfigError
from stages.video.sampling import resized_hw

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """How frames become backbone input; ``Preprocessing.from_backbone(backbone.spec)``."""

    size: int  # crop side in pixels (the backbone's input size)
    short_side: int  # the short side is resized to this first (>= size)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # bicubic | bilinear | nearest

    @classmethod
    def from_backbone(cls, spec: dict[str, Any], short_side: int | None = None) -> Preprocessing:
        """From a backbone spec (``input_size``, ``mean``, ``std``, ``interpolation``)."""
        size = int(spec["input_size"])
        return cls(
            size=size,
            short_side=int(short_side or size),
            mean=tuple(float(v) for v in spec["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in spec["std"]),  # type: ignore[arg-type]
            interpolation=str(spec["interpolation"]),
        )

    def to_json(self) -> dict[str, Any]:
        """What a store records as its ``preprocessing`` (part of the store's fingerprint)."""
        return {
            "input_size": self.size,
            "short_side": self.short_side,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize": "aspect-preserving short side, then crop",
            "dtype_in": "float16",
        }

    def __call__(
        self, frames: np.ndarray | torch.Tensor, crop: tuple[float, float, float, float]
    ) -> torch.Tensor:
        """uint8 frames [n, H, W, 3] -> float32 [n, 3, size, size] (see :func:`preprocess`)."""
        return preprocess(
            frames, crop, size=self.size, short_side=self.short_side, interpolation=self.interpolation,
            mean=self.mean, std=self.std,
        )  # fmt: skip


def preprocess(
    frames: np.ndarray | torch.Tensor,
    crop: tuple[float, float, float, float],
    *,
    size: int,
    short_side: int,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 RGB frames [n, H, W, 3] -> float32 [n, 3, size, size]: resize, crop (y0, x0, h, w), normalise.

    The resize keeps the aspect ratio (short side -> ``short_side``) and antialiases for bilinear and
    bicubic. On CPU it runs on uint8 (torch's fast channels-last path, within 1-2 levels of PIL, which
    open_clip's own transform uses); on other devices in float, clamped to [0, 1]. Frames may be a
    numpy array or a uint8 tensor on any device; the output is on the same device.
    """
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}", source="(preprocess)"
        )
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.require(frames, requirements=["W"]))  # copies only read-only arrays
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [n, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    n, h, w, _ = frames.shape
    rh, rw = resized_hw((h, w), short_side)
    y0, x0, ch, cw = (int(round(v)) for v in crop)
    if y0 < 0 or x0 < 0 or y0 + ch > rh or x0 + cw > rw or (ch, cw) != (size, size):
        raise ValueError(
            f"crop {crop} does not fit a {rh}x{rw} resized frame with size {size}; "
            "plan and preprocess need the same size, short_side and frame size"
        )
    x = resize_frames(frames.permute(0, 3, 1, 2), (rh, rw), interpolation)  # [n, 3, rh, rw] float in [0, 1]
    x = x[:, :, y0 : y0 + size, x0 : x0 + size]  # [n, 3, size, size]
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)  # [1, 3, 1, 1]
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)  # [1, 3, 1, 1]
    return ((x - m) / s).contiguous()  # [n, 3, size, size]


def resize_frames(x: torch.Tensor, hw: tuple[int, int], interpolation: str) -> torch.Tensor:
    """uint8 [n, 3, H, W] -> float32 [n, 3, *hw] in [0, 1] (no-op resize when the size already fits)."""
    if tuple(x.shape[-2:]) == hw:
        return x.float().div_(255.0)
    aa = interpolation != "nearest"  # antialias, like PIL, when shrinking with bilinear/bicubic
    kwargs = {"mode": interpolation, "antialias": aa, "align_corners": False if aa else None}
    if x.device.type == "cpu":
        try:  # 5-10x faster than float on CPU, and rounds to uint8 as PIL does
            return (
                F.interpolate(x.contiguous(memory_format=torch.channels_last), size=hw, **kwargs).float()
                / 255
            )
        except (RuntimeError, NotImplementedError):  # an older torch without this uint8 kernel
            pass
    return F.interpolate(x.float().div_(255.0), size=hw, **kwargs).clamp_(0.0, 1.0)
