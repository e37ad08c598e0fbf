"""Does the training input pipeline keep the head busy? Loader alone, step alone, both together.

    python -m benchmarks.train_input                           # linear, vivit_fe, evl; fp16 and int8 stores
    python -m benchmarks.train_input --videos 48 --heads evl --batches 6

At ViT-B/16 shapes (197 tokens x 768, K = 4 EVL layers over blocks 8-11 with q/k recomputed from the stored
residual stream of block 7, 8 frames a clip, final.cls of 512 for the CLS heads), in one run:

- the store: built here, ``--videos`` videos of 8 rows, float16 and int8, random activation-like values;
- loader alone: ``EpochLoader`` batches (``--workers`` processes, batched store reads) with the page cache
  of the store's files dropped first (posix_fadvise DONTNEED), clips/s; once with the integrity check off
  (what every epoch after the first costs) and once over a first epoch with every video checked;
- step alone: the head's forward, backward and AdamW step on synthetic tensors of the same shapes;
- together: the loader feeding the step, as stage two trains (cache dropped again).

Target: together >= 0.85 x the slower of the two alone. On a CPU-only machine the loader's processes and
the step share the same cores: what "together" loses there is the machine's, which a GPU step would not
take from the loader. Device: cuda when available (``--device``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.store_io import drop_cache, files_under, make_videos
from stages.train.data import ClipDataset, EpochLoader, split_ids
from stages.train.heads import features_of, head_from_description
from stages.train.loop import make_optimizer, param_groups
from stages.train.runtime import pick_device, to_device
from store import FeatureStore, PartWriter, StoreSpec, TensorSpec, VideoEntry, ViewRows, create_store
from store.contract import QK_PARTS, frozen_key

RESULTS = Path(__file__).resolve().parent / "results" / "train_input.json"
L, D, HEADS, E, T = 197, 768, 12, 512, 8
LAYERS = (7, 8, 9, 10, 11)  # b7 is the residual input of block 8 (EVL recomputes block 8's q/k from it)
TARGET = 0.85


def build_store(path: Path, videos: int, dtype: str, seed: int) -> Path:
    tensors = tuple(TensorSpec(f"b{i}.tokens", f"b{i}", "tokens", (L, D), dtype=dtype) for i in LAYERS)
    tensors += (TensorSpec("final.cls", "final", "cls", (E,)),)
    backbone = {
        "name": "benchmark-vit-b16",
        "width": D,
        "heads": HEADS,
        "depth": 12,
        "grid": 14,
        "ln_eps": 1e-6,
        "embed_dim": E,
    }
    rng = np.random.default_rng(seed)
    frozen = {}
    for block in LAYERS[1:]:
        for part in QK_PARTS:
            shape = (D, D) if part.endswith(("q.weight", "k.weight")) else (D,)
            frozen[frozen_key(block, part)] = (
                rng.standard_normal(shape) * (0.02 if len(shape) == 2 else 1.0)
            ).astype(np.float32)
    spec = StoreSpec(
        backbone=backbone,
        preprocessing={},
        sampling={"mode": "clips", "frames": T},
        tensors=tensors,
        classes=tuple(f"c{i}" for i in range(10)),
        storage={"compression": "lz4", "shard_mb": 64},
        frozen=tuple(sorted(frozen)),
    )
    create_store(path, spec, frozen=frozen)
    with PartWriter(path, "p0000") as w:
        for i in range(videos):
            tokens = make_videos(len(LAYERS), T, L, D, seed + i)  # [T, L, D] per layer
            values: dict[str, Any] = {f"b{b}.tokens": x for b, x in zip(LAYERS, tokens, strict=True)}
            values["final.cls"] = rng.standard_normal((T, E)).astype(np.float16)
            rows = ViewRows(view=0, tensors=values, time_s=np.arange(T) / 8.0, frame_index=np.arange(T))
            w.add(VideoEntry(f"v{i:05d}", i % 10, f"v{i:05d}.mp4", 8.0, T), [rows])
    from store import finalize

    finalize(path)
    return path


def head_for(name: str, store: FeatureStore) -> torch.nn.Module:
    options = {"evl": {"layers": 4, "dropout": 0.5}, "vivit_fe": {"depth": 4}, "linear": {}}[name]
    torch.manual_seed(0)
    desc = {"name": name, "options": options, "num_frames": T, "num_classes": len(store.classes)}
    return head_from_description(desc, features_of(store))


def synthetic_batch(store: FeatureStore, inputs: list[str], batch: int) -> dict[str, Any]:
    feats = {n: torch.randn(batch, T, *store.tensors[n].shape, dtype=torch.float16) for n in inputs}
    return {
        "feats": feats,
        "label": torch.randint(0, len(store.classes), (batch,)),
        "video": torch.arange(batch),
    }


def make_step(head: torch.nn.Module, device: torch.device):
    opt = make_optimizer(
        param_groups(list(head.named_parameters()), lr=1e-4, weight_decay=0.05), betas=(0.9, 0.999)
    )

    def step(batch: dict[str, Any]) -> None:
        feats, labels = to_device(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(head(feats).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def rate(clips: int, seconds: float) -> float:
    return clips / max(seconds, 1e-9)


def measure(
    store_path: Path, head_name: str, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    store = FeatureStore(store_path)
    head = head_for(head_name, store).to(device).train()
    inputs = list(head.inputs)
    ids = split_ids(store, 0.0)[0]
    files = files_under(store_path / "parts")
    step = make_step(head, device)
    batch = args.batch if head_name != "evl" else args.evl_batch

    def run(with_step: bool, integrity: str, batches: int) -> tuple[int, float]:
        """``batches`` batches through a fresh loader (its processes started, the first batch untimed),
        over as many epochs as it takes, the store's page cache dropped first."""
        dataset = ClipDataset(store, ids, T, 1, "train", inputs, seed=0, integrity=integrity)
        loader = EpochLoader(dataset, batch_size=batch, shuffle=True, workers=args.workers,
                             pin_memory=device.type == "cuda")  # fmt: skip
        drop_cache(files, args.cache)
        stream = (b for epoch in range(10**6) for b in loader.batches(epoch))
        first = next(stream)
        if with_step:
            step(first)
        clips, t0 = 0, time.perf_counter()
        for _, b in zip(range(batches), stream, strict=False):
            if with_step:
                step(b)
            clips += len(b["label"])
        return clips, time.perf_counter() - t0

    n = args.batches
    first_read = rate(*run(False, "check", max(1, len(ids) // batch)))  # one epoch: every video checked once
    loader_alone = rate(*run(False, "off", n))
    fake = synthetic_batch(store, inputs, batch)
    step(fake)  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        step(fake)
    step_alone = rate(batch * n, time.perf_counter() - t0)
    together = rate(*run(True, "off", n))
    slower = min(loader_alone, step_alone)
    return {
        "head": head_name,
        "inputs": inputs,
        "batches": n,
        "loader_clips_s": loader_alone,
        "first_epoch_checked_clips_s": first_read,
        "batch": batch,
        "step_clips_s": step_alone,
        "together_clips_s": together,
        "ratio": together / slower,
        "bound": "loader" if loader_alone < step_alone else "step",
        "bytes_per_clip": T * sum(store.tensors[i].bytes_per_frame for i in inputs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.train_input", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--videos", type=int, default=96, help="videos (8 frames each) in each store")
    ap.add_argument("--heads", nargs="+", default=["linear", "vivit_fe", "evl"])
    ap.add_argument("--dtypes", nargs="+", default=["float16", "int8"])
    ap.add_argument("--batch", type=int, default=16, help="clips per step (linear, vivit_fe)")
    ap.add_argument("--evl-batch", type=int, default=4, help="clips per step (evl: slow on a CPU)")
    ap.add_argument("--batches", type=int, default=8, help="batches timed per phase")
    ap.add_argument("--workers", type=int, default=2, help="loader processes")
    ap.add_argument("--cache", choices=["fadvise", "drop", "warm"], default="fadvise")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dir", default=None, help="where the stores are built (default: a temp folder here)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = Path(tempfile.mkdtemp(prefix="train_input_", dir=args.dir or "."))
    rows = []
    try:
        for dtype in args.dtypes:
            t0 = time.perf_counter()
            path = build_store(folder / f"{dtype}.zarr", args.videos, dtype, seed=0)
            print(
                f"{dtype} store: {args.videos} videos built in {time.perf_counter() - t0:.0f} s", flush=True
            )
            for head in args.heads:
                r = measure(path, head, args, device) | {"dtype": dtype}
                rows.append(r)
                print(
                    f"  {head:<9} loader {r['loader_clips_s']:7.1f}  step {r['step_clips_s']:7.1f}  together "
                    f"{r['together_clips_s']:7.1f} clips/s  ratio {r['ratio']:.2f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        "| store | head | MB per clip read | clips a step | loader alone clips/s (first epoch, checksums "
        "checked) | step alone clips/s | together clips/s | together / slower | bound | target >= 0.85 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {r['dtype']} | {r['head']} | {r['bytes_per_clip'] / 1e6:.2f} | {r['batch']} | "
        f"{r['loader_clips_s']:.1f} ({r['first_epoch_checked_clips_s']:.1f}) | "
        f"{r['step_clips_s']:.1f} | {r['together_clips_s']:.1f} | {r['ratio']:.2f} | {r['bound']} | "
        f"{'PASS' if r['ratio'] >= TARGET else 'FAIL'} |"
        for r in rows
    ]
    print("\n" + "\n".join(lines))
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
    }
    Path(args.out).write_text(
        json.dumps(
            {"rows": rows, "config": vars(args), "machine": machine, "cache": args.cache, "table": lines},
            indent=2,
        )
    )
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
