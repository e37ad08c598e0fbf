"""Synthetic labelled videos for tests, the quickstart and benchmarks.

Three tasks, each putting the answer somewhere else:

- ``appearance``: which digit is shown; one frame is enough.
- ``direction``: which way the digit moves; needs temporal order. A ``left`` video is literally a ``right``
  video played backwards (same random draws), so single frames and frame averages carry no label.
- ``longrange``: a coloured border shown only in the first ``cue_frames`` frames decides the label; the
  rest is a drifting distractor digit drawn independently of the label.

Sprites are the 8x8 handwritten digits scikit-learn ships, upscaled (nearest) to ``size // 4`` pixels and
drawn white-ish on a dark textured, noisy background. Videos are lossless H.264 in RGB (``libx264rgb``,
crf 0, one thread), which PyAV and decord both decode back to the exact rendered pixels. Caveat: decord
0.6 fails ("DECORDArrayCopyFromTo: The size must exactly match") on some frame widths whatever the codec
(16, 24, 48, 72 px seen; 32, 40, 56, 64, 80+ work): such files exercise the PyAV fallback.

Example:
    >>> rows = generate("/tmp/synth", task="direction", videos=8, seed=0)  # doctest: +SKIP
    >>> rows[0]["path"], rows[0]["label"]  # doctest: +SKIP
    ('videos/000000.mp4', 'up')
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from stages.core.errors import ConfigError

TASKS = ("appearance", "direction", "longrange")
DIRECTIONS = ("left", "right", "up", "down")  # order = class index
CUE_COLOURS = {  # longrange classes: border colours far from the white-ish sprite and the dark background
    "red": (230, 40, 40),
    "green": (40, 210, 60),
    "blue": (50, 90, 255),
    "yellow": (240, 210, 30),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 230),
}
DEFAULT_CLASSES = {"appearance": 4, "direction": 4, "longrange": 2}  # small, fast to learn
DEFAULT_FRAMES = {"appearance": 32, "direction": 32, "longrange": 64}  # longrange needs several chunks
MAX_CLASSES = {"appearance": 10, "direction": len(DIRECTIONS), "longrange": len(CUE_COLOURS)}
NOISE_STD = 4.0  # per-frame pixel noise: enough to defeat pixel-exact shortcuts, small enough to compress
KEYFRAME_INTERVAL = 32  # frames between keyframes: keeps sparse seeks cheap on long videos
ENCODER = {"codec": "libx264rgb", "pix_fmt": "rgb24", "options": {"crf": "0", "preset": "ultrafast"}}


def class_names(task: str, classes: int | None = None) -> list[str]:
    """Class names of ``task`` in class-index order.

    Args:
        task: one of :data:`TASKS`.
        classes: number of classes; ``None`` takes the task default.

    Returns:
        e.g. ``["digit0", "digit1", "digit2", "digit3"]`` or ``["left", "right", "up", "down"]``.
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is unknown; expected one of {', '.join(TASKS)}")
    n = DEFAULT_CLASSES[task] if classes is None else classes
    if not 2 <= n <= MAX_CLASSES[task]:
        raise ConfigError(f"classes={n} for task {task!r}; expected 2..{MAX_CLASSES[task]}")
    if task == "appearance":
        return [f"digit{i}" for i in range(n)]
    if task == "direction":
        return list(DIRECTIONS[:n])
    return list(CUE_COLOURS)[:n]


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits as ([N, 8, 8] float32 in 0..1, [N] int targets)."""
    from sklearn.datasets import load_digits  # local: sklearn is slow to import

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


def _sprite(rng: np.random.Generator, digit: int, s: int) -> np.ndarray:
    """A random handwriting of ``digit``, nearest-upscaled to [s, s] alpha in 0..1."""
    images, targets = _digits()
    img = images[rng.choice(np.flatnonzero(targets == digit))]  # [8, 8]
    idx = np.arange(s) * 8 // s  # nearest-neighbour source rows/cols
    return img[idx][:, idx]  # [s, s]


def _background(rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """A dark, smooth colour texture plus per-frame noise: [T, size, size, 3] float32."""
    coarse = rng.uniform(8, 60, size=(5, 5, 3))  # [5, 5, 3] dark colour blobs
    grid = np.linspace(0, 4, size)
    w = np.maximum(0, 1 - np.abs(grid[:, None] - np.arange(5)[None, :]))  # [size, 5] linear interp
    texture = np.einsum("yi,ijc,xj->yxc", w, coarse, w)  # [size, size, 3]
    noise = rng.normal(0, NOISE_STD, size=(frames, size, size, 3))  # [T, size, size, 3]
    return (texture[None] + noise).astype(np.float32)


def _drift(rng: np.random.Generator, frames: int, room: int) -> np.ndarray:
    """A random walk that bounces inside [0, room]: integer [T, 2] (x, y) top-left positions."""
    pos = rng.uniform(0, room, size=2)
    vel = rng.normal(0, 1, size=2)
    vel *= rng.uniform(0.5, 1.5) * room / max(frames, 1) / np.linalg.norm(vel)  # ~one crossing per video
    out = np.empty((frames, 2), dtype=np.int64)
    for t in range(frames):
        out[t] = np.rint(pos)
        vel += rng.normal(0, 0.1 * room / max(frames, 1), size=2)  # wobble
        pos = pos + vel
        for a in range(2):  # reflect at the walls
            if pos[a] < 0 or pos[a] > room:
                pos[a] = -pos[a] if pos[a] < 0 else 2 * room - pos[a]
                vel[a] = -vel[a]
    return out


def _line(rng: np.random.Generator, frames: int, room: int) -> np.ndarray:
    """A straight run forward along one axis: [T] integer positions, start random so frames hide direction."""
    speed = rng.uniform(0.5, 1.0) * room / max(frames - 1, 1)  # travel 50-100% of the free room
    travel = speed * (frames - 1)
    start = rng.uniform(0, room - travel)
    return np.rint(start + speed * np.arange(frames)).astype(np.int64)


def _draw(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray, xy: np.ndarray) -> None:
    """Alpha-blend a sprite of ``colour`` into each frame of ``canvas`` at its (x, y)."""
    s = alpha.shape[0]
    a = alpha[..., None]  # [s, s, 1]
    for frame, (x, y) in zip(canvas, xy, strict=True):
        patch = frame[y : y + s, x : x + s]  # [s, s, 3]
        patch[:] = patch * (1 - a) + colour * a


def render(
    task: str,
    label: int,
    seed: int | Sequence[int],
    *,
    size: int = 64,
    frames: int = 32,
    classes: int | None = None,
    cue_frames: int | None = None,
    sprite: float = 0.25,
) -> tuple[np.ndarray, dict]:
    """Render one video in memory. Pure: the same arguments give the same pixels.

    The random draws do not depend on ``label``: for ``direction``, ``left`` is exactly ``right`` reversed
    (and ``up`` is ``down`` reversed); for ``longrange``, two labels differ only in the first
    ``cue_frames`` frames.

    Args:
        task: one of :data:`TASKS`.
        label: class index into :func:`class_names`.
        seed: an int or a sequence of ints (e.g. ``(seed, video_index)``) for ``numpy.random.default_rng``.
        size: frame height and width in pixels.
        frames: number of frames T.
        classes: number of classes (task default if ``None``).
        cue_frames: ``longrange`` only: frames that show the cue (default ``frames // 8``).
        sprite: sprite side as a fraction of the frame side (0.25: a quarter; larger is easier to see).

    Returns:
        ``(video, meta)``: video ``[T, size, size, 3]`` uint8 RGB; meta is JSON-able (digit, trajectory...).
    """
    names = class_names(task, classes)
    if not 0 <= label < len(names):
        raise ConfigError(f"label index {label} out of range for {len(names)} {task} classes")
    if size < 16 or frames < 2:
        raise ConfigError(f"size={size}, frames={frames}; expected size >= 16 and frames >= 2")
    rng = np.random.default_rng(seed)
    if not 0.05 <= sprite <= 0.75:
        raise ConfigError(f"sprite={sprite}; expected a fraction of the frame side in [0.05, 0.75]")
    s = max(2, int(size * sprite))  # sprite side in pixels
    room = size - s
    digit = label if task == "appearance" else int(rng.integers(0, 10))
    alpha = _sprite(rng, digit, s)
    colour = rng.uniform(200, 255, size=3).astype(np.float32)  # white-ish with a little tint
    video = _background(rng, size, frames)
    meta: dict = {"task": task, "label": names[label], "label_index": label, "digit": digit}
    if task == "direction":
        xy = _direction_path(rng, frames, room, vertical=label >= 2)
        _draw(video, alpha, colour, xy)
        if label in (0, 2):  # left / up: the forward (right / down) video played backwards
            video, xy = video[::-1], xy[::-1]
    else:
        xy = _drift(rng, frames, room)
        _draw(video, alpha, colour, xy)
    if task == "longrange":
        meta.update(_add_cue(video, names[label], size, frames, cue_frames))
    meta["trajectory"] = xy.tolist()
    return np.clip(np.rint(video), 0, 255).astype(np.uint8), meta


def _direction_path(rng: np.random.Generator, frames: int, room: int, vertical: bool) -> np.ndarray:
    """Forward (right or down) straight trajectory as [T, 2] (x, y); the other axis stays fixed."""
    along = _line(rng, frames, room)
    across = np.full(frames, int(rng.integers(0, room + 1)))
    cols = (across, along) if vertical else (along, across)
    return np.stack(cols, axis=1)  # [T, 2]


def _add_cue(video: np.ndarray, name: str, size: int, frames: int, cue_frames: int | None) -> dict:
    """Paint the label's coloured border on the first ``cue_frames`` frames (in place)."""
    n = max(1, frames // 8) if cue_frames is None else cue_frames  # the first of 8 chunks
    if not 1 <= n < frames:
        raise ConfigError(f"cue_frames={n} with frames={frames}; expected 1 <= cue_frames < frames")
    b = max(2, size // 16)  # border width
    cue = video[:n]  # [n, size, size, 3] view
    colour = np.asarray(CUE_COLOURS[name], dtype=np.float32)
    for region in (cue[:, :b], cue[:, -b:], cue[:, :, :b], cue[:, :, -b:]):
        region[:] = colour
    return {"cue_colour": name, "cue_start": 0, "cue_end": n, "border": b}


def write_video(path: str | os.PathLike, video: np.ndarray, fps: float) -> None:
    """Encode ``video`` [T, H, W, 3] uint8 RGB losslessly and deterministically to an mp4 at ``path``."""
    import av  # local: only writers need it

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(ENCODER["codec"], rate=rate)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = ENCODER["pix_fmt"]
        stream.options = {**ENCODER["options"], "g": str(KEYFRAME_INTERVAL)}
        stream.thread_count = 1  # one thread: x264 output is then byte-identical run to run
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def generate(
    out_dir: str | os.PathLike,
    *,
    task: str,
    videos: int,
    seed: int,
    size: int = 64,
    frames: int | None = None,
    fps: float = 8.0,
    classes: int | None = None,
    cue_frames: int | None = None,
    sprite: float = 0.25,
) -> list[dict]:
    """Write ``videos`` labelled mp4s plus ``labels.csv`` and ``classes.txt`` under ``out_dir``.

    Classes are balanced (round-robin, then shuffled by ``seed``); video ``i`` depends only on
    ``(seed, i)`` and its label.

    Args:
        out_dir: output folder (created).
        task: one of :data:`TASKS`.
        videos: number of videos.
        seed: random seed; the same seed gives identical labels and decoded frames.
        size: frame side in pixels.
        frames: frames per video (default 32, or 64 for ``longrange``).
        fps: frame rate written into the mp4.
        classes: number of classes (default 4, or 2 for ``longrange``).
        cue_frames: ``longrange`` only: frames showing the cue (default ``frames // 8``).
        sprite: sprite side as a fraction of the frame side.

    Returns:
        One dict per video: ``path`` (relative to ``out_dir``), ``label``, ``label_index``, ``fps``,
        ``frames``, ``size`` and the task metadata of :func:`render`.
    """
    names = class_names(task, classes)
    frames = DEFAULT_FRAMES[task] if frames is None else frames
    if videos < 1 or fps <= 0:
        raise ConfigError(f"videos={videos}, fps={fps}; expected videos >= 1 and fps > 0")
    labels = np.random.default_rng(seed).permutation(np.arange(videos) % len(names))
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, label in enumerate(labels.tolist()):
        video, meta = render(
            task,
            label,
            (seed, i),
            size=size,
            frames=frames,
            classes=len(names),
            cue_frames=cue_frames,
            sprite=sprite,
        )
        rel = f"videos/{i:06d}.mp4"
        write_video(out / rel, video, fps)
        rows.append({"path": rel, **meta, "fps": fps, "frames": frames, "size": size})
    _write_text(out / "classes.txt", "".join(f"{n}\n" for n in names))
    _write_labels(out / "labels.csv", rows)
    return rows


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def _write_labels(path: Path, rows: list[dict]) -> None:
    """Write ``path,label`` rows as csv, atomically."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows([r["path"], r["label"]] for r in rows)
    _write_text(path, buf.getvalue())
