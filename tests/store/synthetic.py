"""Deterministic synthetic store content for the store tests (and the writer subprocess they spawn).

Every video is a pure function of ``(seed, i)``, so a killed-and-resumed run can be compared with an
uninterrupted one, and a writer process can reproduce what the test expects without sharing memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from store import FeatureStore, StoreSpec, TensorSpec, VideoEntry, ViewRows

D, L, HEADS, DH, P, E = 16, 5, 2, 8, 2, 12  # width, tokens (1 + 2x2), heads, head dim, pooled grid, embed

TENSORS = (
    TensorSpec("b2.tokens", "b2", "tokens", (L, D)),  # float16
    TensorSpec("b2.pooled", "b2", "pooled", (P * P, D), pool=P),  # float16, pooled patch grid
    TensorSpec("b3.q", "b3", "q", (L, HEADS, DH), dtype="int8"),  # int8 + per-token scale
    TensorSpec("b3.tokens", "b3", "tokens", (L, D), dtype="int8"),
    TensorSpec("final.cls", "final", "cls", (E,)),
)
FROZEN_NAMES = ("b3.ln_1.weight", "b3.ln_1.bias", "b3.q.weight", "b3.q.bias")
SMALL_SHARD_MB = 0.002  # ~2 KB: 8-row shards for b2.tokens (160 B/row), smaller than most videos
LARGE_SHARD_MB = 4.0  # 4096-row shards: many whole videos per shard


def make_spec(
    *,
    shard_mb: float = SMALL_SHARD_MB,
    compression: str = "zstd",
    name: str = "tiny-vit",
    tensors: tuple[TensorSpec, ...] = TENSORS,
    frozen: tuple[str, ...] = FROZEN_NAMES,
    chunk_crc: bool = False,
) -> StoreSpec:
    return StoreSpec(
        backbone={
            "name": name,
            "family": "timm",
            "pretrained": None,
            "weights_file": None,
            "sha256": None,
            "input_size": 32,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
            "interpolation": "bicubic",
            "patch_size": 16,
            "grid": 2,
            "width": D,
            "depth": 4,
            "heads": HEADS,
            "tokens_per_frame": L,
            "embed_dim": E,
            "ln_eps": 1e-6,
        },
        preprocessing={"resize": 32, "crop": "center"},
        sampling={"mode": "clips", "frames": 8, "stride": 2},
        tensors=tensors,
        classes=("left", "right", "up"),
        config={"store": {"path": "x"}, "seed": 0},
        storage={"shard_mb": shard_mb, "compression": compression, "chunk_crc": chunk_crc},
        frozen=frozen,
    )


def frozen_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"b3.ln_1.weight": (D,), "b3.ln_1.bias": (D,), "b3.q.weight": (D, D), "b3.q.bias": (D,)}
    return {name: rng.normal(size=shapes[name]).astype(np.float32) for name in FROZEN_NAMES}


def activations(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Activation-like values: normal with a per-channel scale (a few channels much larger)."""
    channel_scale = np.exp(rng.normal(0.0, 1.0, size=shape[-1]))
    return rng.normal(size=shape) * channel_scale


def video_id(i: int) -> str:
    return f"vid_{i:03d}"


def make_video(
    seed: int,
    i: int,
    *,
    max_rows: int = 50,
    tensors: tuple[TensorSpec, ...] = TENSORS,
) -> tuple[VideoEntry, list[ViewRows]]:
    """Video ``i``: 1-3 views of 1..max_rows rows each, every tensor of ``tensors`` (float64 input)."""
    rng = np.random.default_rng([seed, i])
    views = []
    for view in range(int(rng.integers(1, 4))):
        n = int(rng.integers(1, max_rows + 1))
        start = int(rng.integers(0, 100))
        values = {t.name: activations(rng, (n, *t.shape)) for t in tensors}
        if n > 2:
            values[tensors[0].name][1] = 0.0  # an all-zero frame (int8: the tiny-scale path)
        views.append(
            ViewRows(
                view=view,
                tensors=values,
                time_s=(start + np.arange(n)) / 25.0,
                frame_index=start + np.arange(n) * 2,
                padded=np.arange(n) >= n - int(rng.integers(0, 3)),
                meta={"temporal": view, "crop": [0, 0, 32, 32]},
            )
        )
    entry = VideoEntry(
        id=video_id(i),
        label=int(rng.integers(-1, 3)),
        source=f"/videos/{video_id(i)}.mp4",
        fps=25.0,
        num_frames=int(rng.integers(50, 500)),
        meta={"seed": seed, "i": i},
    )
    return entry, views


def expected_stored(
    views: list[ViewRows], tensors: tuple[TensorSpec, ...] = TENSORS
) -> dict[int, dict[str, np.ndarray]]:
    """What a reader must return for float16 tensors (exactly ``x.astype(float16)``), per view."""
    return {
        v.view: {t.name: np.asarray(v.tensors[t.name]).astype(np.float16) for t in tensors if not t.quantised}
        for v in views
    }


def decoded(fs: FeatureStore, vid: str) -> dict[tuple[int, str], np.ndarray]:
    """Every stored array of one video, raw (int8 and scales as stored) plus the row metadata."""
    rec = fs.video(vid)
    out: dict[tuple[int, str], np.ndarray] = {}
    for view in rec.views:
        for name, value in fs.read(vid, view, dequantise=False).items():
            out[(view, name)] = value
        for name, value in fs.row_meta(vid, view).items():
            out[(view, name)] = value
        for t in fs.spec.tensors:
            if t.quantised:
                start, n = rec.views[view]
                out[(view, t.name + ".scale")] = fs.read_raw(rec.part, t.name + ".scale", start, start + n)
    return out


def snapshot(fs: FeatureStore) -> dict[str, Any]:
    """Everything a user can see of a store, by id (row positions excluded: they depend on history)."""
    return {
        rec.id: {
            "label": rec.label,
            "source": rec.source,
            "fps": rec.fps,
            "num_frames": rec.num_frames,
            "meta": rec.meta,
            "view_meta": rec.view_meta,
            "checksum": rec.checksum,
            "views": {v: n for v, (_, n) in rec.views.items()},
            "arrays": decoded(fs, rec.id),
        }
        for rec in fs.videos
    }


def assert_same_content(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for vid in a:
        arrays_a, arrays_b = a[vid]["arrays"], b[vid]["arrays"]
        assert {k: v for k, v in a[vid].items() if k != "arrays"} == {
            k: v for k, v in b[vid].items() if k != "arrays"
        }, vid
        assert sorted(arrays_a) == sorted(arrays_b), vid
        for key in arrays_a:
            np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=f"{vid} {key}")
