"""``twostage plan``: before extracting, what caching will cost and whether it pays.

    extract config --source list, a few videos probed--> videos, frames stored per video
                   --backbone built (random weights: the same shapes and FLOPs)--> bytes per frame per option
                   --probes: disk write/read of a temp file, the model on a batch, decoding a few clips
      --> per option: store size, one-off extraction, per-epoch read or recompute time, total for N epochs

Options compared: cache every configured tensor in float16, the same in int8 (+ a float16 scale per
token), cache the per-frame CLS only (the cheapest store, but only CLS heads can train from it), and no
cache at all (decode and run the backbone every epoch: the end-to-end path's cost without its backward).
The arithmetic (:func:`estimate`) is separate from the probes, so it can be checked by hand.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MB = 1e6


@dataclass(frozen=True)
class Probes:
    """Measured speeds on this machine (or given by hand)."""

    disk_write_mbps: float
    disk_read_mbps: float
    model_frames_per_s: float  # backbone forward, frames per second, at the configured batch
    decode_frames_per_s: float  # decoding + preprocessing, frames per second, all decode workers together
    # When the model runs on the CPU, decode workers and the model share its cores: each frame then costs
    # decode_workers / decode_frames_per_s + model_threads / model_frames_per_s CPU-seconds, and the cores
    # do at most cpu_cores of those a second. 0 cores: the model is on a GPU, the two overlap freely.
    cpu_cores: int = 0
    decode_workers: int = 1
    model_threads: int = 1

    def frames_per_s(self) -> float:
        """Extraction speed: the slower of decoding and the model (they overlap), and, on a shared CPU,
        no faster than its cores can do both."""
        rate = min(self.model_frames_per_s, self.decode_frames_per_s)
        if self.cpu_cores > 0:
            decode = self.decode_workers / self.decode_frames_per_s  # CPU-seconds per frame
            model = self.model_threads / self.model_frames_per_s
            rate = min(rate, self.cpu_cores / (decode + model))
        return rate


@dataclass(frozen=True)
class Workload:
    videos: int
    frames_per_video: float  # stored rows per video (all views)
    clip_frames: int  # frames a head reads per video per epoch
    epochs: int
    bytes_per_frame: dict[str, int]  # option -> stored bytes per frame


@dataclass
class Option:
    name: str
    store_gb: float
    extract_s: float  # one-off: decode + model over every stored frame, and the write
    epoch_s: float  # per epoch: reading the clips back (cached) or decoding + model (on the fly)
    total_s: float
    note: str = ""


@dataclass
class Plan:
    workload: Workload
    probes: Probes
    options: list[Option] = field(default_factory=list)
    cheapest: str = ""


def estimate(w: Workload, p: Probes, *, tokens_needed: bool = True) -> Plan:
    """Every option's cost for ``w`` at the speeds ``p``; the cheapest option that can train the head
    (``tokens_needed``: the head reads patch tokens, so a CLS-only store cannot serve it)."""
    frames = w.videos * w.frames_per_video
    make = frames / p.frames_per_s()  # decode workers and the model overlap (sharing a CPU's cores)
    plan = Plan(w, p)
    for name, per_frame in w.bytes_per_frame.items():
        total = frames * per_frame
        write = total / MB / p.disk_write_mbps
        epoch = w.videos * w.clip_frames * per_frame / MB / p.disk_read_mbps
        note = "CLS heads only (linear, vivit_fe A, memvit on CLS)" if name == "cache CLS only" else ""
        plan.options.append(
            Option(name, total / 1e9, make + write, epoch, make + write + w.epochs * epoch, note)
        )
    fly = w.videos * w.clip_frames / p.frames_per_s()
    plan.options.append(
        Option("train on the fly", 0.0, 0.0, fly, w.epochs * fly, "decode + backbone each epoch")
    )
    usable = [o for o in plan.options if not (tokens_needed and o.name == "cache CLS only")]
    plan.cheapest = min(usable, key=lambda o: o.total_s).name
    return plan


def bytes_per_frame(shapes: dict[str, tuple[int, ...]], dtype: str) -> int:
    """Stored bytes per frame of tensors of these per-frame shapes (store/schema.py's rule)."""
    from store.schema import TensorSpec

    total = 0
    for name, shape in shapes.items():
        layer, _, kind = name.rpartition(".")
        total += TensorSpec(
            name=name, layer=layer, kind=kind, shape=tuple(shape), dtype=dtype
        ).bytes_per_frame
    return total


def probe_disk(folder: Path, mb: int = 128) -> tuple[float, float]:
    """Write ``mb`` MB to a temp file in ``folder`` (fsync), then read it back after asking the kernel to
    drop it from the page cache; MB/s each way. On a VM the host may still cache it: the read figure is an
    upper bound."""
    folder.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(0, 255, size=mb * 1_000_000, dtype=np.uint8).tobytes()
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".twostage-plan-", delete=False) as f:
        path = f.name
    try:
        t0 = time.perf_counter()
        with open(path, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        write = mb / (time.perf_counter() - t0)
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            t0 = time.perf_counter()
            while os.read(fd, 8 << 20):
                pass
            read = mb / (time.perf_counter() - t0)
        finally:
            os.close(fd)
    finally:
        os.unlink(path)
    return write, read


def probe_model(backbone: Any, requests: list[Any], batch: int, size: int, repeats: int = 2) -> float:
    """Frames per second of the backbone's forward (with the configured taps) on random frames."""
    import torch

    x = torch.randn(batch, 3, size, size, device=backbone.device)
    with torch.inference_mode():
        backbone.forward_tensors(x, requests)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            backbone.forward_tensors(x, requests)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t0)


def table(plan: Plan) -> str:
    w, p = plan.workload, plan.probes
    lines = [
        f"{w.videos} videos x {w.frames_per_video:.0f} stored frames; a head reads {w.clip_frames} frames "
        f"per video per epoch; {w.epochs} epochs",
        f"probes: disk write {p.disk_write_mbps:.0f} MB/s, read {p.disk_read_mbps:.0f} MB/s; model "
        f"{p.model_frames_per_s:.0f} frames/s; decode {p.decode_frames_per_s:.0f} frames/s"
        + (f"; on {p.cpu_cores} shared CPU cores: {p.frames_per_s():.0f} frames/s" if p.cpu_cores else ""),
        "",
        "| option | bytes/frame | store GB | extract once s | per epoch s | total s | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for o in plan.options:
        per = w.bytes_per_frame.get(o.name)
        lines.append(f"| {o.name}{' (cheapest)' if o.name == plan.cheapest else ''} | "
                     f"{'-' if per is None else f'{per:,}'} | {o.store_gb:.3f} | {o.extract_s:.1f} | "
                     f"{o.epoch_s:.2f} | {o.total_s:.1f} | {o.note} |")  # fmt: skip
    return "\n".join(lines)
