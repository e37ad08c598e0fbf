"""Decoded clips as a PyTorch dataset: what a model that learns from pixels trains and evaluates on.

    VideoItem list
      mode "train": key ClipKey(epoch, index, frames, stride, size) -> one clip of video `index`:
          start drawn from (seed, epoch, id); clip-consistent random resized crop, flip, colour (augment.py)
      mode "eval":  key = index of (video, view) -> the stored-features views: temporal x spatial test
          views (plan_clips), short side resized, centre / left-centre-right crops (preprocess.py)
      -> {"pixels": float32 [T, 3, S, S], "label": int, "video": int (eval: the video's number)}

The shape of a training clip comes with its key, so one dataset serves every multigrid batch shape
(frames, stride and crop size change per batch without rebuilding anything). Every random choice is a
function of (seed, epoch, video id) alone: a clip is the same whatever the worker or batch that makes it.

A video that cannot be decoded during training is replaced by the next one of the list (a warning names
it once per process); in evaluation it raises :class:`stages.core.errors.DecodeError` naming it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from stages.core.errors import DecodeError
from stages.video import augment as aug
from stages.video import decode, sources
from stages.video.preprocess import Preprocessing
from stages.video.sampling import Sampling, centre_crop, plan_views, stable_seed, trim_window

_MAX_SUBSTITUTES = 8  # consecutive undecodable videos tolerated before training gives up


class ClipKey(NamedTuple):
    """A training clip: video ``index`` in ``epoch``, at this shape (None: the dataset's default)."""

    epoch: int
    index: int
    frames: int | None = None
    stride: int | None = None
    size: int | None = None


class VideoClipDataset(Dataset):
    """Clips decoded from videos, augmented for training or planned as test views for evaluation.

    Args:
        items: the videos (``stages.video.sources.read_source``).
        labels: class index per item (-1: unlabelled).
        frames, stride: default clip shape (T frames, ``stride`` source frames apart).
        mode: ``"train"`` (keys are :class:`ClipKey`) or ``"eval"`` (keys are ints over video x view).
        preprocessing: size, short side, mean, std, interpolation (from the backbone spec).
        augment: training augmentation; None = a centre crop after the short-side resize.
        seed: fixes every random choice together with the epoch and the video id.
        temporal_views, spatial_views: evaluation views per video.
        decoder: ``auto`` (decord, PyAV fallback), ``decord`` or ``pyav``.
    """

    def __init__(
        self,
        items: Sequence[sources.VideoItem],
        labels: Sequence[int],
        *,
        frames: int,
        stride: int,
        mode: str,
        preprocessing: Preprocessing,
        augment: aug.Augment | None = None,
        seed: int = 0,
        temporal_views: int = 1,
        spatial_views: int = 1,
        decoder: str = "auto",
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if len(items) != len(labels):
            raise ValueError(f"{len(items)} items but {len(labels)} labels")
        self.items, self.labels = list(items), np.asarray(labels, dtype=np.int64)
        self.frames, self.stride, self.mode = frames, stride, mode
        self.pre, self.augment, self.seed, self.decoder = preprocessing, augment, seed, decoder
        self.views = temporal_views * spatial_views
        self.sampling = Sampling(
            mode="clips", frames=frames, stride=stride, temporal_views=temporal_views,
            spatial_views=spatial_views, split="test", seed=seed,
        )  # fmt: skip
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.items) * (self.views if self.mode == "eval" else 1)

    def __getitem__(self, key: ClipKey | int) -> dict[str, torch.Tensor | int]:
        if self.mode == "eval":
            number, view = divmod(int(key), self.views)
            return {
                "pixels": self._eval_clip(number, view),
                "label": int(self.labels[number]),
                "video": number,
            }
        if not isinstance(key, ClipKey):
            key = ClipKey(0, int(key))
        for attempt in range(_MAX_SUBSTITUTES + 1):
            number = (key.index + attempt) % len(self.items)
            try:
                pixels = self._train_clip(number, key)
            except DecodeError as e:
                self._warn(self.items[number], e)
                continue
            return {"pixels": pixels, "label": int(self.labels[number]), "video": number}
        raise DecodeError(
            f"{_MAX_SUBSTITUTES + 1} consecutive videos from {self.items[key.index].path} on could not be "
            "decoded; check the source list (`twostage extract` records which videos fail, and why)"
        )

    def _train_clip(self, number: int, key: ClipKey) -> torch.Tensor:
        item = self.items[number]
        frames, stride = key.frames or self.frames, key.stride or self.stride
        size = key.size or self.pre.size
        rng = np.random.default_rng(stable_seed(self.seed, item.id, key.epoch))
        with decode.open_video(sources.open_bytes(item), backend=self.decoder, name=item.path) as reader:
            first, n = trim_window(reader.info, item.start, item.end)
            span = (frames - 1) * stride + 1
            start = int(rng.integers(0, max(n - span, 0) + 1))
            idx = np.minimum(start + np.arange(frames) * stride, n - 1) + first  # [T]
            raw = reader.get_frames(idx.tolist())  # uint8 [T, H, W, 3]
        if self.augment is None:  # a centre crop after the short-side resize, scaled with the size
            short = max(size, round(self.pre.short_side * size / self.pre.size))
            pre = Preprocessing(size, short, self.pre.mean, self.pre.std, self.pre.interpolation)
            return pre(raw, centre_crop(raw.shape[1:3], size, short))
        d = aug.draw(self.augment, raw.shape[1:3], rng)
        return aug.apply(
            raw, d, size=size, interpolation=self.pre.interpolation, mean=self.pre.mean, std=self.pre.std
        )

    def _eval_clip(self, number: int, view: int) -> torch.Tensor:
        item = self.items[number]
        with decode.open_video(sources.open_bytes(item), backend=self.decoder, name=item.path) as reader:
            plans, first = plan_views(
                self.sampling, reader, size=self.pre.size, short_side=self.pre.short_side,
                video_key=item.id, start=item.start, end=item.end,
            )  # fmt: skip
            plan = plans[view]
            raw = reader.get_frames((plan.frame_indices + first).tolist())
        return self.pre(raw, plan.crop)

    def _warn(self, item: sources.VideoItem, error: Exception) -> None:
        if item.id not in self._warned:
            self._warned.add(item.id)
            warnings.warn(f"skipping video {item.id!r} ({item.path}): {error}", stacklevel=3)


def collate_pixels(samples: list[dict]) -> dict[str, torch.Tensor]:
    """``{"pixels": [B, T, 3, S, S], "label": [B], "video": [B]}``."""
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "label": torch.as_tensor([s["label"] for s in samples], dtype=torch.long),
        "video": torch.as_tensor([s["video"] for s in samples], dtype=torch.long),
    }
