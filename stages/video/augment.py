"""Clip-consistent pixel augmentation for training on pixels (the end-to-end path; stage one uses none).

    uint8 frames [T, H, W, 3]
      --one draw per clip: crop box (area in `scale`, aspect in `ratio`), flip, colour factors--
      --crop (same box every frame) -> resize to size x size -> flip -> colour jitter -> normalise-->
    float32 [T, 3, size, size]

Every frame of a clip gets the same crop, flip and colour change (a per-frame draw would add motion that
is not in the video). The draw is a function of the generator alone, so a clip is the same whatever the
loader worker that makes it. The crop follows torchvision's ``RandomResizedCrop`` parameters (ten tries,
then a centre crop of the clamped aspect ratio).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stages.video.preprocess import resize_frames


@dataclass(frozen=True)
class Augment:
    """Augmentation settings (plain values; the e2e config's ``augment`` section)."""

    scale: tuple[float, float] = (0.08, 1.0)  # crop area / frame area (Inception-style; ViT/MViT recipes)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w / h
    flip: float = 0.5  # probability of a horizontal flip (0 for data sets where left/right is the label)
    color_jitter: float = 0.0  # brightness, contrast, saturation each in [1 - j, 1 + j]; 0 = off

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0 <= self.flip <= 1 or not 0 <= self.color_jitter < 1:
            raise ValueError(
                f"need 0 <= flip <= 1 and 0 <= color_jitter < 1, got {self.flip}, {self.color_jitter}"
            )


@dataclass(frozen=True)
class Draw:
    """One clip's augmentation: crop box in source pixels, flip, colour factors."""

    crop: tuple[int, int, int, int]  # (y0, x0, h, w)
    flip: bool
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0


def draw(augment: Augment, frame_hw: tuple[int, int], rng: np.random.Generator) -> Draw:
    """A random draw for one clip of frames ``frame_hw`` (H, W)."""
    h, w = frame_hw
    crop = _crop_box(h, w, augment.scale, augment.ratio, rng)
    flip = bool(rng.random() < augment.flip)
    j = augment.color_jitter
    factors = rng.uniform(1 - j, 1 + j, size=3) if j > 0 else np.ones(3)
    return Draw(crop, flip, *(float(f) for f in factors))


def _crop_box(
    h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h  # fallback: the whole frame at the nearest allowed aspect, centred
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def apply(
    frames: np.ndarray | torch.Tensor,
    d: Draw,
    *,
    size: int,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> float32 ``[T, 3, size, size]`` with draw ``d`` applied to all."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.require(frames, requirements=["W"]))
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    y0, x0, ch, cw = d.crop
    if y0 < 0 or x0 < 0 or y0 + ch > frames.shape[1] or x0 + cw > frames.shape[2]:
        raise ValueError(f"crop {d.crop} does not fit {tuple(frames.shape[1:3])} frames")
    x = frames[:, y0 : y0 + ch, x0 : x0 + cw].permute(0, 3, 1, 2)  # [T, 3, ch, cw] uint8
    x = resize_frames(x, (size, size), interpolation)  # [T, 3, size, size] float in [0, 1]
    if d.flip:
        x = x.flip(-1)
    x = _jitter(x, d)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()  # [T, 3, size, size]


def _jitter(x: torch.Tensor, d: Draw) -> torch.Tensor:
    """Brightness, contrast, saturation (torchvision's definitions), on [0, 1] floats, clip-wide."""
    if d.brightness == d.contrast == d.saturation == 1.0:
        return x
    x = (x * d.brightness).clamp_(0, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # [T, 1, S, S]
    x = (d.contrast * x + (1 - d.contrast) * gray.mean()).clamp_(0, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    return (d.saturation * x + (1 - d.saturation) * gray).clamp_(0, 1)
