"""Clip-consistent pixel augmentation and the pixel dataset the end-to-end path trains on."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.video import augment as aug
from stages.video import decode, sources
from stages.video.dataset import ClipKey, VideoClipDataset, collate_pixels
from stages.video.preprocess import Preprocessing
from stages.video.sampling import plan_clips

PRE = Preprocessing(
    size=32, short_side=36, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear"
)


def ramp_frames(t: int = 4, h: int = 48, w: int = 64) -> np.ndarray:
    """Frames whose pixels say where they are: red = x, green = y, blue = frame number."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.zeros((t, h, w, 3), np.uint8)
    out[..., 0] = (x * 255 // (w - 1))[None]
    out[..., 1] = (y * 255 // (h - 1))[None]
    out[..., 2] = np.arange(t)[:, None, None] * 40
    return out


@pytest.mark.parametrize("seed", range(20))
def test_draws_respect_scale_ratio_and_the_frame(seed):
    a = aug.Augment(scale=(0.2, 0.6), ratio=(0.5, 2.0))
    d = aug.draw(a, (48, 64), np.random.default_rng(seed))
    y0, x0, h, w = d.crop
    assert 0 <= y0 and 0 <= x0 and y0 + h <= 48 and x0 + w <= 64
    assert 0.2 * 48 * 64 * 0.8 <= h * w <= 0.6 * 48 * 64 * 1.2  # rounding to whole pixels
    assert 0.5 * 0.8 <= w / h <= 2.0 * 1.2


def test_one_draw_per_clip_every_frame_gets_the_same_crop_and_flip():
    frames = ramp_frames()
    frames[..., 2] = 0  # identical frames
    d = aug.Draw(crop=(4, 8, 30, 40), flip=True, brightness=1.2, contrast=0.9, saturation=1.1)
    out = aug.apply(frames, d, size=32, interpolation="bilinear", mean=PRE.mean, std=PRE.std)
    assert out.shape == (4, 3, 32, 32)
    for t in range(1, 4):
        torch.testing.assert_close(out[t], out[0], rtol=0, atol=0)


def test_flip_mirrors_and_the_crop_is_where_it_says():
    frames = ramp_frames()
    plain = aug.apply(frames, aug.Draw((0, 0, 48, 64), False), size=32, interpolation="bilinear",
                      mean=(0, 0, 0), std=(1, 1, 1))  # fmt: skip
    flipped = aug.apply(frames, aug.Draw((0, 0, 48, 64), True), size=32, interpolation="bilinear",
                        mean=(0, 0, 0), std=(1, 1, 1))  # fmt: skip
    torch.testing.assert_close(flipped, plain.flip(-1))
    assert plain[0, 0, :, 0].max() < 0.05 and plain[0, 0, :, -1].min() > 0.95  # red grows with x
    right = aug.apply(frames, aug.Draw((0, 32, 48, 32), False), size=32, interpolation="bilinear",
                      mean=(0, 0, 0), std=(1, 1, 1))  # fmt: skip
    assert right[0, 0].min() > 0.45  # the right half only
    torch.testing.assert_close(right[:, 2, 0, 0], torch.arange(4.0) * 40 / 255, atol=1e-3, rtol=0)


def test_no_jitter_keeps_colours_and_bad_settings_are_refused():
    d = aug.draw(aug.Augment(color_jitter=0.0), (48, 64), np.random.default_rng(0))
    assert (d.brightness, d.contrast, d.saturation) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="scale must satisfy"):
        aug.Augment(scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="flip"):
        aug.Augment(flip=2.0)


@pytest.fixture(scope="module")
def items(direction_videos: Path) -> tuple[list[sources.VideoItem], list[int]]:
    videos, classes = sources.read_source(str(direction_videos / "labels.csv"))
    return videos[:4], [classes.index(v.label) for v in videos[:4]]


def test_training_clips_are_a_function_of_seed_epoch_and_video(items):
    videos, labels = items
    ds = VideoClipDataset(videos, labels, frames=4, stride=2, mode="train", preprocessing=PRE,
                          augment=aug.Augment(), seed=3)  # fmt: skip
    a, b = ds[ClipKey(0, 1)], ds[ClipKey(0, 1)]
    torch.testing.assert_close(a["pixels"], b["pixels"], rtol=0, atol=0)
    assert a["label"] == labels[1] and a["video"] == 1 and a["pixels"].shape == (4, 3, 32, 32)
    assert not torch.equal(ds[ClipKey(1, 1)]["pixels"], a["pixels"])  # another epoch, another clip
    other = VideoClipDataset(videos, labels, frames=4, stride=2, mode="train", preprocessing=PRE,
                             augment=aug.Augment(), seed=4)  # fmt: skip
    assert not torch.equal(other[ClipKey(0, 1)]["pixels"], a["pixels"])


def test_the_key_sets_the_clip_shape(items):
    videos, labels = items
    ds = VideoClipDataset(videos, labels, frames=8, stride=2, mode="train", preprocessing=PRE,
                          augment=aug.Augment())  # fmt: skip
    small = ds[ClipKey(0, 0, frames=2, stride=4, size=16)]
    assert small["pixels"].shape == (2, 3, 16, 16)
    batch = collate_pixels([ds[ClipKey(0, i, frames=4, size=24)] for i in range(3)])
    assert batch["pixels"].shape == (3, 4, 3, 24, 24) and batch["label"].tolist() == labels[:3]
    centre = VideoClipDataset(videos, labels, frames=4, stride=2, mode="train", preprocessing=PRE)
    assert centre[ClipKey(0, 0, size=16)]["pixels"].shape == (4, 3, 16, 16)


def test_eval_views_equal_stage_ones_preprocessing(items):
    videos, labels = items
    ds = VideoClipDataset(videos, labels, frames=4, stride=2, mode="eval", preprocessing=PRE,
                          temporal_views=2, spatial_views=3)  # fmt: skip
    assert len(ds) == 4 * 6
    got = ds[1 * 6 + 5]  # video 1, temporal view 1, right crop
    with decode.open_video(videos[1].path) as reader:
        info = reader.info
        plan = plan_clips(info.num_frames, info.fps, frames=4, stride=2, temporal_views=2, spatial_views=3,
                          mode="test", size=32, short_side=36, frame_hw=(info.height, info.width), seed=0,
                          video_key=videos[1].id)[5]  # fmt: skip
        want = PRE(reader.get_frames(plan.frame_indices.tolist()), plan.crop)
    torch.testing.assert_close(got["pixels"], want, rtol=0, atol=0)
    assert got["video"] == 1 and got["label"] == labels[1]


def test_an_undecodable_training_video_is_replaced_and_named(items, tmp_path):
    videos, labels = items
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    mixed = [sources.VideoItem(id="broken", path=str(bad), label=None), *videos]
    ds = VideoClipDataset(mixed, [0, *labels], frames=4, stride=2, mode="train", preprocessing=PRE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ds[ClipKey(0, 0)]
    assert out["video"] == 1 and any("skipping video 'broken'" in str(w.message) for w in caught)
