"""Frame sampling plans and pixel preprocessing (pure numpy/torch, no file I/O).

    (num_frames, fps, frame_hw) --plan_clips / plan_dense--> [ViewPlan: frame indices, padding, crop]
    decoder.get_frames(plan.frame_indices)  uint8 [T, H, W, 3]
        --preprocess--> resize (short side) -> crop size x size -> normalise   float32 [T, 3, size, size]

Two samplers, registered in ``SAMPLERS``:

- ``clips``: T frames at a fixed stride; ``temporal_views x spatial_views`` views per video. Test mode
  spreads clip starts uniformly (segment centres; one view = centred) and crops left/centre/right along
  the long side (one view = centre). Train mode draws a random start and crop position per view from a
  stable hash of (seed, video key, view), the same crop for every frame of the clip.
- ``dense``: every frame resampled to a target fps (nearest timestamp), one view, centre crop.

Example:
    >>> plans = plan_clips(300, 30.0, frames=8, stride=4, temporal_views=2, spatial_views=3, mode="test",
    ...                    size=224, short_side=224, frame_hw=(240, 320), seed=0, video_key="v")
    >>> [p.view for p in plans], plans[0].frame_indices[:3].tolist()
    ([0, 1, 2, 3, 4, 5], [67, 71, 75])
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stages.core.errors import ConfigError
from stages.core.registry import Registry

SAMPLERS = Registry("sampler")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class ViewPlan:
    """One view of one video: which source frames, which are padding, and where to crop."""

    view: int  # view id = temporal_pos * spatial_views + spatial_pos
    frame_indices: np.ndarray  # int64 [T] source frame indices (repeat when padded)
    padded: np.ndarray  # bool [T] True where the index repeats because the video was too short
    crop: tuple[float, float, float, float]  # (y0, x0, h, w) in the resized frame's pixels
    temporal_pos: int
    spatial_pos: int


def resized_hw(frame_hw: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(H, W) after an aspect-preserving resize whose short side becomes ``short_side``."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"frame size must be positive, got frame_hw={frame_hw}")
    if h <= w:
        return short_side, max(short_side, round(w * short_side / h))
    return max(short_side, round(h * short_side / w)), short_side


def _spread(span: int, count: int) -> list[int]:
    """``count`` offsets in [0, span] at segment centres, mirror-symmetric (o[i] + o[-1-i] == span)."""
    offsets = [span // 2] * count  # the middle one (odd count) is the centre
    for i in range(count // 2):
        offsets[i] = max(int(np.floor((i + 0.5) * (span + 1) / count - 0.5 + 1e-9)), 0)
        offsets[count - 1 - i] = span - offsets[i]
    return offsets


def _positions(span: int, count: int) -> list[int]:
    """``count`` crop offsets in [0, span]: the centre for one; both ends and evenly between for more."""
    offsets = [span // 2] * count
    for i in range(count // 2):
        offsets[i] = int(np.floor(span * i / (count - 1)))
        offsets[count - 1 - i] = span - offsets[i]
    return offsets


def stable_seed(seed: int, video_key: str, view: int) -> int:
    """A 64-bit seed from (seed, video_key, view) that is the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b(f"{seed}\x1f{video_key}\x1f{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _clip(start: int, frames: int, stride: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    raw = start + np.arange(frames, dtype=np.int64) * stride  # [T]
    return np.minimum(raw, num_frames - 1), raw > num_frames - 1


def _check(num_frames: int, size: int, short_side: int, **positive: int) -> None:
    problems = [f"{k} must be a positive integer, got {v!r}" for k, v in positive.items() if int(v) < 1]
    if size < 1 or short_side < size:
        problems.append(f"need 1 <= size <= short_side, got size={size}, short_side={short_side}")
    if problems:
        raise ConfigError(problems, source="(sampling)")
    if num_frames < 1:
        raise ValueError(f"cannot sample a video with {num_frames} frames; expected at least 1")


@SAMPLERS.register("clips")
def plan_clips(
    num_frames: int,
    fps: float,
    *,
    frames: int,
    stride: int,
    temporal_views: int,
    spatial_views: int,
    mode: str,
    size: int,
    short_side: int,
    frame_hw: tuple[int, int],
    seed: int,
    video_key: str,
) -> list[ViewPlan]:
    """Plans for ``temporal_views x spatial_views`` clips of ``frames`` frames ``stride`` apart.

    ``fps`` is unused (the stride counts frames) and kept so every sampler takes the same arguments.
    Clips longer than the video clamp to its last frame; those entries are marked ``padded``.
    """
    _check(
        num_frames,
        size,
        short_side,
        frames=frames,
        stride=stride,
        temporal_views=temporal_views,
        spatial_views=spatial_views,
    )
    if mode not in ("test", "train"):
        raise ConfigError(f"sampling mode must be 'test' or 'train', got {mode!r}", source="(sampling)")
    span = (frames - 1) * stride + 1  # source frames one clip covers
    slack = max(num_frames - span, 0)  # valid clip starts are 0..slack
    rh, rw = resized_hw(frame_hw, short_side)
    long_is_w = rw >= rh
    starts = _spread(slack, temporal_views)
    offsets = _positions((rw if long_is_w else rh) - size, spatial_views)
    plans = []
    for t in range(temporal_views):
        for s in range(spatial_views):
            view = t * spatial_views + s
            if mode == "train":
                rng = np.random.default_rng(stable_seed(seed, video_key, view))
                start = int(rng.integers(0, slack + 1))
                y0, x0 = int(rng.integers(0, rh - size + 1)), int(rng.integers(0, rw - size + 1))
            else:
                start = starts[t]
                y0, x0 = ((rh - size) // 2, offsets[s]) if long_is_w else (offsets[s], (rw - size) // 2)
            idx, pad = _clip(start, frames, stride, num_frames)
            plans.append(ViewPlan(view, idx, pad, (float(y0), float(x0), float(size), float(size)), t, s))
    return plans


@SAMPLERS.register("dense")
def plan_dense(
    num_frames: int,
    fps: float,
    *,
    target_fps: float | None,
    size: int,
    short_side: int,
    frame_hw: tuple[int, int],
    max_frames: int | None = None,
    timestamps: Sequence[float] | np.ndarray | None = None,
) -> list[ViewPlan]:
    """One centre-cropped view of the whole video at ``target_fps`` (None = every frame).

    Output time k/target_fps takes the source frame whose timestamp is nearest; ``timestamps`` (seconds
    per source frame, e.g. ``reader.timestamps(range(n))``) makes this exact for variable frame rate,
    otherwise frame i is taken to start at i / fps. ``max_frames`` keeps only the first frames.
    """
    _check(num_frames, size, short_side, max_frames=1 if max_frames is None else max_frames)
    if target_fps is None:
        idx = np.arange(num_frames, dtype=np.int64)  # [n]
    else:
        if not target_fps > 0 or not fps > 0:
            raise ConfigError(
                f"target_fps and fps must be > 0, got {target_fps!r}, {fps!r}", source="(sampling)"
            )
        times = np.arange(num_frames) / fps if timestamps is None else np.asarray(timestamps, np.float64)
        if times.shape != (num_frames,):
            raise ValueError(f"timestamps must have one entry per frame ({num_frames}), got {times.shape}")
        duration = times[-1] + (times[-1] - times[0]) / max(num_frames - 1, 1) if num_frames > 1 else 1 / fps
        count = max(int(np.ceil(duration * target_fps - 1e-6)), 1)  # outputs at k/target_fps < duration
        wanted = np.arange(count) / target_fps  # [K]
        right = np.clip(np.searchsorted(times, wanted), 1, max(num_frames - 1, 1))  # [K]
        left = right - 1
        nearer_left = np.abs(wanted - times[left]) <= np.abs(
            times[np.minimum(right, num_frames - 1)] - wanted
        )
        idx = np.where(nearer_left, left, right).clip(0, num_frames - 1).astype(np.int64)  # [K]
    if max_frames is not None:
        idx = idx[:max_frames]
    rh, rw = resized_hw(frame_hw, short_side)
    crop = (float((rh - size) // 2), float((rw - size) // 2), float(size), float(size))
    return [ViewPlan(0, idx, np.zeros(idx.shape, dtype=bool), crop, 0, 0)]


def preprocess(
    frames: np.ndarray | torch.Tensor,
    plan: ViewPlan,
    *,
    size: int,
    short_side: int,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 RGB frames [n, H, W, 3] -> float32 [n, 3, size, size]: resize, crop ``plan.crop``, normalise.

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
    y0, x0, ch, cw = (int(round(v)) for v in plan.crop)
    if y0 < 0 or x0 < 0 or y0 + ch > rh or x0 + cw > rw or (ch, cw) != (size, size):
        raise ValueError(
            f"crop {plan.crop} does not fit a {rh}x{rw} resized frame with size {size}; "
            "plan and preprocess need the same size, short_side and frame size"
        )
    x = _resize(frames.permute(0, 3, 1, 2), (rh, rw), interpolation)  # [n, 3, rh, rw] float in [0, 1]
    x = x[:, :, y0 : y0 + size, x0 : x0 + size]  # [n, 3, size, size]
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)  # [1, 3, 1, 1]
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)  # [1, 3, 1, 1]
    return ((x - m) / s).contiguous()  # [n, 3, size, size]


def _resize(x: torch.Tensor, hw: tuple[int, int], interpolation: str) -> torch.Tensor:
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
