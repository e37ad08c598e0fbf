"""Tiny feature stores for the stage-two tests, written directly with the store API (no extraction).

The task is ``direction`` in feature space: frame t of a video of class k is
``content + sign(k) * ramp[t] * axis(k) + noise`` with a per-video random ``content`` vector, a ramp
running from -1 to +1 over the stored rows, ``axis`` one of two fixed directions and ``sign`` +-1
(4 classes: axis 0 +, axis 0 -, axis 1 +, axis 1 -). The ramp has mean zero over any centred clip, so a
frame average (the ``linear`` head) carries no label; a head that sees temporal order does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stages.core.config import from_dict
from stages.train.config import TrainConfig
from store import PartWriter, StoreSpec, TensorSpec, VideoEntry, ViewRows, create_store, finalize

WIDTH, DEPTH, HEADS, GRID, EMBED = 16, 2, 2, 2, 16
L = 1 + GRID * GRID
CLASSES = ("axis0+", "axis0-", "axis1+", "axis1-")


def backbone(name: str = "tiny-vit") -> dict[str, Any]:
    return {
        "name": name,
        "family": "timm",
        "pretrained": None,
        "weights_file": None,
        "sha256": None,
        "input_size": 8,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bicubic",
        "patch_size": 4,
        "grid": GRID,
        "width": WIDTH,
        "depth": DEPTH,
        "heads": HEADS,
        "tokens_per_frame": L,
        "embed_dim": EMBED,
        "ln_eps": 1e-5,
    }


def cls_tensors() -> tuple[TensorSpec, ...]:
    return (TensorSpec("final.cls", "final", "cls", (EMBED,)),)


def token_tensors() -> tuple[TensorSpec, ...]:
    """Residual streams for EVL (q/k recomputed from the frozen weights), plus the final embedding."""
    return (
        TensorSpec("embed.tokens", "embed", "tokens", (L, WIDTH)),
        TensorSpec("b0.tokens", "b0", "tokens", (L, WIDTH)),
        TensorSpec("b1.tokens", "b1", "tokens", (L, WIDTH), dtype="int8"),
        TensorSpec("b1.pooled", "b1", "pooled", (GRID * GRID, WIDTH), pool=GRID),
        TensorSpec("final.cls", "final", "cls", (EMBED,)),
    )


def frozen_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(123)
    out = {}
    for layer in range(DEPTH):
        out[f"b{layer}.ln_1.weight"] = 1 + 0.1 * rng.standard_normal(WIDTH)
        out[f"b{layer}.ln_1.bias"] = 0.1 * rng.standard_normal(WIDTH)
        for proj in ("q", "k"):
            out[f"b{layer}.{proj}.weight"] = 0.3 * rng.standard_normal((WIDTH, WIDTH))
            out[f"b{layer}.{proj}.bias"] = 0.1 * rng.standard_normal(WIDTH)
    return {k: v.astype(np.float32) for k, v in out.items()}


def direction_frames(
    rng: np.random.Generator,
    label: int,
    rows: int,
    dim: int,
    axes: np.ndarray,
    content: np.ndarray,
    noise: float,
) -> np.ndarray:
    """[rows, dim] features whose label is the sign and axis of a zero-mean ramp."""
    ramp = np.linspace(-1.0, 1.0, rows)[:, None]  # [rows, 1]
    sign = 1.0 if label % 2 == 0 else -1.0
    return content[None] + sign * ramp * axes[label // 2][None] + noise * rng.standard_normal((rows, dim))


def make_store(
    path: Path,
    *,
    videos: int = 32,
    rows: int = 16,
    views: int = 2,
    seed: int = 0,
    tensors: tuple[TensorSpec, ...] | None = None,
    name: str = "tiny-vit",
    complete: bool = True,
    noise: float = 0.1,
    unlabelled: int = 0,
    content_scale: float = 0.3,
    signal: float = 2.0,
    id_prefix: str = "v",
    targets: Callable[[int], dict[str, Any]] | None = None,
) -> Path:
    """A store of ``videos`` direction videos (classes balanced), ``views`` views of ``rows`` rows each;
    ``targets(label)`` gives each labelled video's ``meta["targets"]`` (as stage one keeps them)."""
    tensors = tensors or cls_tensors()
    frozen = frozen_weights() if any(t.kind == "tokens" for t in tensors) else {}
    spec = StoreSpec(
        backbone=backbone(name),
        preprocessing={"input_size": 8},
        tensors=tensors,
        sampling={"mode": "clips", "frames": rows, "stride": 1, "temporal_views": views},
        classes=CLASSES,
        config={"test": True},
        storage={"shard_mb": 1.0},
        frozen=tuple(sorted(frozen)),
    )
    create_store(path, spec, frozen=frozen)
    axes = np.linalg.qr(np.random.default_rng(999).standard_normal((EMBED, 2)))[0].T * signal  # [2, E] fixed
    with PartWriter(path, "p0000", commit_interval_s=3600.0) as w:
        for i in range(videos + unlabelled):
            rng = np.random.default_rng([seed, i])
            label = i % len(CLASSES) if i < videos else -1
            content = content_scale * rng.standard_normal(EMBED)
            view_rows = []
            for view in range(views):
                cls = direction_frames(rng, max(label, 0), rows, EMBED, axes, content, noise)  # [rows, E]
                feats = {"final.cls": cls}
                for t in tensors:
                    if t.name != "final.cls":
                        feats[t.name] = rng.standard_normal((rows, *t.shape)) * 0.5
                        feats[t.name][:, 0] += cls  # the CLS token carries the same signal (WIDTH == EMBED)
                view_rows.append(
                    ViewRows(
                        view=view,
                        tensors=feats,
                        time_s=np.arange(rows) / 8.0,
                        frame_index=np.arange(rows) * 2,
                        meta={"temporal_pos": view},
                    )
                )
            w.add(
                VideoEntry(
                    id=f"{id_prefix}{i:03d}",
                    label=label,
                    source=f"/synthetic/{id_prefix}{i:03d}.mp4",
                    fps=8.0,
                    num_frames=2 * rows,
                    meta={"targets": targets(label)} if targets and label >= 0 else {},
                ),
                view_rows,
            )
    if complete:
        finalize(path)
    return path


def make_cfg(out: Path, store: Path, **sections: dict[str, Any]) -> TrainConfig:
    """A test config: small batches, no loader processes, no plots, 2 epochs; ``sections`` merged in."""
    data = {"store": str(store), "val_fraction": 0.25, "workers": 0, "batch_size": 4} | sections.pop(
        "data", {}
    )
    run = {"out": str(out), "plots": False, "log_every": 1000} | sections.pop("run", {})
    optim = {"epochs": 2, "lr": 3e-3, "warmup_epochs": 0.5} | sections.pop("optim", {})
    return from_dict(TrainConfig, {"data": data, "run": run, "optim": optim, **sections})


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny heads run faster on one thread, and a busy 2-core machine makes OpenMP spin-waits very slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def store_factory(tmp_path_factory: pytest.TempPathFactory):
    """``store_factory(key, **make_store_kwargs)``: one store per key per session."""
    made: dict[str, Path] = {}

    def make(key: str, **kwargs: Any) -> Path:
        if key not in made:
            made[key] = make_store(tmp_path_factory.mktemp("stores") / f"{key}.zarr", **kwargs)
        return made[key]

    return make


@pytest.fixture(scope="session")
def direction_store(store_factory) -> Path:
    """48 direction videos, 2 views of 16 rows, final.cls only."""
    return store_factory("direction", videos=48)


@pytest.fixture(scope="session")
def token_store(store_factory) -> Path:
    """16 videos with residual streams (EVL, token dropout), 2 views of 8 rows."""
    return store_factory("tokens", videos=16, rows=8, tensors=token_tensors())
