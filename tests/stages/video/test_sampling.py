"""Sampling plans (clips, dense) and preprocessing (resize, crop, normalise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.core.errors import ConfigError
from stages.video.preprocess import preprocess
from stages.video.sampling import (
    ViewPlan,
    plan_clips,
    plan_dense,
    resized_hw,
    stable_seed,
)

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's


def clips(
    num_frames=300,
    *,
    mode="test",
    t=1,
    s=1,
    frames=8,
    stride=4,
    hw=(240, 320),
    size=224,
    short=224,
    seed=0,
    key="video-a",
) -> list[ViewPlan]:
    return plan_clips(
        num_frames,
        30.0,
        frames=frames,
        stride=stride,
        temporal_views=t,
        spatial_views=s,
        mode=mode,
        size=size,
        short_side=short,
        frame_hw=hw,
        seed=seed,
        video_key=key,
    )


def test_single_test_view_is_centred_with_stride():
    (plan,) = clips(100, frames=8, stride=4)  # span 29, starts 0..71: centre 35
    assert plan.frame_indices.dtype == np.int64
    assert plan.frame_indices.tolist() == list(range(35, 35 + 29, 4))
    assert not plan.padded.any()
    assert plan.crop == (0.0, 37.0, 224.0, 224.0)  # 240x320 -> 224x299, centre along x


def test_short_video_is_padded_with_its_last_frame():
    (plan,) = clips(10, frames=8, stride=4)
    assert plan.frame_indices.tolist() == [0, 4, 8, 9, 9, 9, 9, 9]
    assert plan.padded.tolist() == [False] * 3 + [True] * 5
    (one,) = clips(1, frames=4, stride=1)
    assert one.frame_indices.tolist() == [0, 0, 0, 0] and one.padded.tolist() == [False, True, True, True]


@pytest.mark.parametrize("mode", ["test", "train"])
def test_views_enumerate_temporal_times_spatial(mode):
    plans = clips(mode=mode, t=4, s=3)
    assert [p.view for p in plans] == list(range(12))
    assert [(p.temporal_pos, p.spatial_pos) for p in plans] == [(t, s) for t in range(4) for s in range(3)]
    for p in plans:
        assert p.frame_indices.shape == p.padded.shape == (8,)
        assert np.all(np.diff(p.frame_indices) == 4)  # one clip, fixed stride


def test_test_views_are_symmetric():
    plans = clips(300, t=4, s=3)
    starts = [plans[t * 3].frame_indices[0] for t in range(4)]
    slack = 300 - 29
    assert starts == sorted(starts) and len(set(starts)) == 4
    assert [a + b for a, b in zip(starts, starts[::-1], strict=True)] == [slack] * 4
    x0 = [plans[s].crop[1] for s in range(3)]
    assert x0 == [0.0, 37.0, 75.0]  # left, centre, right of a 224x299 frame
    assert {p.crop[0] for p in plans} == {0.0}


def test_three_crops_run_along_the_long_side_of_portrait_frames():
    plans = clips(hw=(320, 240), s=3)  # portrait: 299x224 after resize
    assert [p.crop[:2] for p in plans] == [(0.0, 0.0), (37.0, 0.0), (75.0, 0.0)]


def test_train_views_are_deterministic_and_differ_between_videos_and_views():
    a, b = clips(mode="train", t=2, s=2, seed=3), clips(mode="train", t=2, s=2, seed=3)
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p.frame_indices, q.frame_indices)
        assert p.crop == q.crop
    keyed = {(p.frame_indices[0], p.crop) for p in a}
    assert len(keyed) == 4  # every view draws its own start and crop
    others = [clips(mode="train", key=f"video-{i}", seed=3)[0] for i in range(8)]
    assert len({(p.frame_indices[0], p.crop) for p in others}) >= 7
    reseeded = clips(mode="train", t=2, s=2, seed=4)
    assert [(p.frame_indices[0], p.crop) for p in reseeded] != [(p.frame_indices[0], p.crop) for p in a]


def test_train_crops_stay_inside_the_resized_frame():
    rh, rw = resized_hw((240, 320), 256)
    for i in range(50):
        (p,) = clips(mode="train", short=256, key=str(i))
        y0, x0, h, w = p.crop
        assert 0 <= y0 <= rh - h and 0 <= x0 <= rw - w and (h, w) == (224, 224)
        assert 0 <= p.frame_indices[0] <= 300 - 29


def test_stable_seed_is_process_independent():
    assert stable_seed(0, "video-a", 0) == 12888325343478540716
    assert stable_seed(0, "video-a", 1) != stable_seed(0, "video-a", 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"frames": 0}, "frames must be a positive integer"),
        ({"t": 0}, "temporal_views must be"),
        ({"size": 256, "short": 224}, "size <= short_side"),
        ({"mode": "val"}, "'test' or 'train'"),
    ],
)
def test_bad_sampling_parameters_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        clips(**kwargs)


def test_empty_video_cannot_be_sampled():
    with pytest.raises(ValueError, match="0 frames"):
        clips(0)


def test_resize_keeps_aspect():
    assert resized_hw((240, 320), 224) == (224, 299)
    assert resized_hw((1080, 1920), 256) == (256, 455)
    assert resized_hw((320, 240), 224) == (299, 224)
    assert resized_hw((100, 100), 224) == (224, 224)


def test_dense_native_and_resampled():
    (native,) = plan_dense(10, 30.0, target_fps=None, size=224, short_side=224, frame_hw=(240, 320))
    assert native.frame_indices.tolist() == list(range(10)) and not native.padded.any()
    assert native.view == 0 and native.crop == (0.0, 37.0, 224.0, 224.0)
    (half,) = plan_dense(10, 30.0, target_fps=15.0, size=224, short_side=224, frame_hw=(240, 320))
    assert half.frame_indices.tolist() == [0, 2, 4, 6, 8]
    (up,) = plan_dense(4, 10.0, target_fps=20.0, size=224, short_side=224, frame_hw=(224, 224))
    assert up.frame_indices.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    (capped,) = plan_dense(
        100, 30.0, target_fps=None, size=224, short_side=224, frame_hw=(240, 320), max_frames=16
    )
    assert capped.frame_indices.tolist() == list(range(16))


def test_dense_edge_cases():
    (single,) = plan_dense(1, 30.0, target_fps=5.0, size=16, short_side=16, frame_hw=(16, 16))
    assert single.frame_indices.tolist() == [0]
    with pytest.raises(ConfigError, match="max_frames must be a positive integer"):
        plan_dense(10, 30.0, target_fps=None, size=16, short_side=16, frame_hw=(16, 16), max_frames=0)
    with pytest.raises(ConfigError, match="target_fps and fps must be > 0"):
        plan_dense(10, 30.0, target_fps=0.0, size=16, short_side=16, frame_hw=(16, 16))


def test_dense_uses_timestamps_for_variable_frame_rate():
    times = np.array([0.0, 0.04, 0.06, 0.15, 0.16, 0.17, 0.30, 0.34])
    (plan,) = plan_dense(
        8, 25.0, target_fps=10.0, size=16, short_side=16, frame_hw=(16, 16), timestamps=times
    )
    assert plan.frame_indices.tolist() == [0, 2, 5, 6]  # 0.0; 0.1 -> 0.06; 0.2 -> 0.17; 0.3 -> 0.30


def _plan(crop, view=0) -> ViewPlan:
    return ViewPlan(view, np.zeros(1, np.int64), np.zeros(1, bool), crop, 0, 0)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocess_constant_colour_maps_to_normalised_value(interpolation):
    frames = np.empty((3, 240, 320, 3), np.uint8)
    frames[...] = (200, 100, 30)
    (plan,) = clips(hw=(240, 320), short=256)
    out = preprocess(
        frames, plan.crop, size=224, short_side=256, interpolation=interpolation, mean=MEAN, std=STD
    )
    assert out.dtype == torch.float32 and out.shape == (3, 3, 224, 224)
    expected = (torch.tensor([200, 100, 30]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), expected, atol=1e-4, rtol=0)
    assert (out.amax(dim=(0, 2, 3)) - out.amin(dim=(0, 2, 3))).max() < 1e-4


def test_three_crops_see_left_centre_and_right():
    frames = np.zeros((2, 100, 200, 3), np.uint8)
    frames[:, :, 100:] = 255  # left half black, right half white
    plans = clips(hw=(100, 200), s=3, size=64, short=64)  # resized 64x128
    outs = [
        preprocess(
            frames, p.crop, size=64, short_side=64, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1)
        )
        for p in plans
    ]
    assert outs[0][..., :60].max() < 0.01 and outs[2][..., 4:].min() > 0.99  # antialias blurs the edge (x=64)
    assert outs[1][..., :30].max() < 0.01 and outs[1][..., 34:].min() > 0.99  # edge in the middle
    for out in outs:  # clip-consistent: every frame of a view gets the same crop
        torch.testing.assert_close(out[0], out[1])


def test_preprocess_rejects_mismatched_inputs():
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match="interpolation must be one of"):
        preprocess(
            frames,
            _plan((0, 0, 16, 16)).crop,
            size=16,
            short_side=16,
            interpolation="lanczos",
            mean=MEAN,
            std=STD,  # fmt: skip
        )
    with pytest.raises(ValueError, match="does not fit"):
        preprocess(
            frames,
            _plan((10, 0, 16, 16)).crop,
            size=16,
            short_side=16,
            interpolation="bilinear",
            mean=MEAN,
            std=STD,
        )
    with pytest.raises(ValueError, match="expected uint8 frames"):
        preprocess(
            frames.astype(np.float32),
            _plan((0, 0, 16, 16)).crop,
            size=16,
            short_side=16,
            interpolation="bilinear",
            mean=MEAN,
            std=STD,
        )


def test_preprocess_without_resize_is_an_exact_crop():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    out = preprocess(
        frames,
        _plan((0, 5, 24, 24)).crop,
        size=24,
        short_side=24,
        interpolation="bicubic",
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    expected = torch.from_numpy(frames[:, :, 5:29]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_resize_matches_pil_like_open_clip_transform(interpolation):
    image_mod = pytest.importorskip("PIL.Image")
    filt = pytest.importorskip("PIL.ImageFilter")
    noise = (np.random.default_rng(1).random((120, 160, 3)) * 255).astype(np.uint8)
    smooth = np.asarray(image_mod.fromarray(noise).filter(filt.GaussianBlur(2)))  # [120, 160, 3]
    resample = {"bicubic": image_mod.BICUBIC, "bilinear": image_mod.BILINEAR}[interpolation]
    reference = np.asarray(image_mod.fromarray(smooth).resize((85, 64), resample))  # PIL takes (w, h)
    plan = _plan((0, 0, 64, 64))
    out = preprocess(smooth[None], plan.crop, size=64, short_side=64, interpolation=interpolation,
                     mean=(0, 0, 0), std=(1, 1, 1))  # fmt: skip
    ours = out[0].permute(1, 2, 0).numpy() * 255  # [64, 64, 3]
    assert np.abs(ours - reference[:, :64]).max() <= 2.01


def test_preprocess_accepts_tensors_like_arrays():
    frames = np.random.default_rng(2).integers(0, 256, (2, 30, 50, 3), dtype=np.uint8)
    (plan,) = clips(hw=(30, 50), size=16, short=20)
    kwargs = dict(size=16, short_side=20, interpolation="bicubic", mean=MEAN, std=STD)
    torch.testing.assert_close(
        preprocess(torch.from_numpy(frames), plan.crop, **kwargs), preprocess(frames, plan.crop, **kwargs)
    )
