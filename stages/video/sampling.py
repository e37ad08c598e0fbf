"""Clip planning: which frames of a video to take, and where to crop them (pure numpy, no file I/O).

    (num_frames, fps, frame_hw) --plan_clips / plan_dense--> [ViewPlan: frame indices, padding, crop]
    reader.get_frames(plan.frame_indices)  uint8 [T, H, W, 3]  --Preprocessing (preprocess.py)-->  pixels

:func:`plan_views` plans the views of one opened video from a :class:`Sampling` (its trim window
included). Two samplers:

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
from typing import Any

import numpy as np

from stages.core.errors import ConfigError, SourceError


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
    crop = centre_crop(frame_hw, size, short_side)
    return [ViewPlan(0, idx, np.zeros(idx.shape, dtype=bool), crop, 0, 0)]


@dataclass(frozen=True)
class Sampling:
    """How frames are taken from each video (plain, picklable values; the extract config's ``sampling``)."""

    mode: str = "clips"  # "clips" | "dense"
    frames: int = 8
    stride: int = 2
    temporal_views: int = 1
    spatial_views: int = 1
    split: str = "test"  # clips: "test" (spread, centred) | "train" (seeded random start and crop)
    target_fps: float | None = None  # dense
    max_frames: int | None = None  # dense
    seed: int = 0


def plan_views(
    sampling: Sampling,
    reader: Any,
    *,
    size: int,
    short_side: int,
    video_key: str,
    start: float | None = None,
    end: float | None = None,
) -> tuple[list[ViewPlan], int]:
    """Views of one opened video (``reader.info``, ``reader.timestamps``) within its ``[start, end]`` trim
    window in seconds, and the first source frame of that window (plans count from it)."""
    info = reader.info
    first, n = trim_window(info, start, end)
    hw = (info.height, info.width)
    s = sampling
    if s.mode == "dense":
        t = np.asarray(reader.timestamps(list(range(first, first + n))), np.float64)
        plans = plan_dense(
            n,
            info.fps,
            target_fps=s.target_fps,
            size=size,
            short_side=short_side,
            frame_hw=hw,
            max_frames=s.max_frames,
            timestamps=t - t[0],
        )  # fmt: skip  (real pts: variable frame rate sampled by time)
    else:
        plans = plan_clips(
            n, info.fps, frames=s.frames, stride=s.stride, temporal_views=s.temporal_views,
            spatial_views=s.spatial_views, mode=s.split, size=size, short_side=short_side, frame_hw=hw,
            seed=s.seed, video_key=video_key,
        )  # fmt: skip
    return plans, first


def trim_window(info: Any, start: float | None, end: float | None) -> tuple[int, int]:
    """First source frame and frame count (>= 1) of the ``[start, end]`` window (seconds) of a video whose
    reader reports ``info.fps`` and ``info.num_frames``."""
    first = 0 if start is None else max(0, int(start * info.fps))
    last = info.num_frames if end is None else min(info.num_frames, int(np.ceil(end * info.fps)))
    if first >= info.num_frames:
        duration = info.num_frames / info.fps if info.fps > 0 else float("nan")
        raise SourceError(
            f"trim window start={start} s is at or past the video's end ({info.num_frames} frames, "
            f"{duration:.2f} s); fix the start/end columns of the source list"
        )
    return first, max(1, last - first)


def centre_crop(frame_hw: tuple[int, int], size: int, short_side: int) -> tuple[float, float, float, float]:
    """The centre ``size x size`` crop ``(y0, x0, h, w)`` of a frame resized to ``short_side``."""
    rh, rw = resized_hw(frame_hw, short_side)
    return (float((rh - size) // 2), float((rw - size) // 2), float(size), float(size))
