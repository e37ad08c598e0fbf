"""Training cost: one head trained (a) from the feature store, (b) on the fly from video through the frozen
backbone. Seconds per epoch, peak memory and accuracy of each, same data, head, epochs and batch size.

    python -m benchmarks.train_cost                      # CPU: tiny backbone, synthetic `direction` videos
    python -m benchmarks.train_cost --backbone openclip_vit_b16.openai --device cuda --videos 256

(b) is what a peer pipeline without a feature cache does every epoch: decode, sample, preprocess, run the
backbone, then the head. (a) pays decode + backbone once (stage one, timed separately) and then reads
features. Writes ``benchmarks/results/train_cost.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core.config import load_config
from stages.extract.config import ExtractConfig
from stages.extract.stage import decode_job, parse_requests, run_extract
from stages.extract.worker import DecodeJob, plan_item
from stages.models import build_backbone
from stages.train.config import TrainConfig
from stages.train.data import split_ids
from stages.train.heads import build_head
from stages.train.loop import lr_at
from stages.train.stage import run_train
from stages.video import decode
from stages.video.sources import VideoItem
from stages.video.synth import generate
from store import FeatureStore


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def clip_frames(job: DecodeJob, path: str, key: str) -> torch.Tensor:
    """Decode and preprocess one clip with stage one's own sampling and preprocessing: [T, 3, S, S]."""
    item = VideoItem(id=key, path=path, label=None)
    with decode.open_video(path) as reader:
        plan = plan_item(job, reader, item)[0][0]
        return job.pre(reader.get_frames(plan.frame_indices.tolist()), plan.crop)


def on_the_fly(
    store: FeatureStore, extract: ExtractConfig, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Train and evaluate the same head, computing features from video at every step."""
    backbone = build_backbone(args.backbone, device=str(device))
    job = decode_job(extract, backbone)  # stage one's own sampling and preprocessing
    requests = backbone.resolve(parse_requests(args.tensors, 2))
    train_ids, val_ids = split_ids(store, 0.25)
    torch.manual_seed(0)
    head = build_head(
        args.head,
        tensors={n: t.shape for n, t in store.tensors.items()},
        backbone=store.backbone,
        num_classes=len(store.classes),
        num_frames=args.frames,
        frozen=store.frozen_weights() or None,
        **json.loads(args.head_options),
    ).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = -(-len(train_ids) // args.batch_size)
    total, step, epoch_s = steps_per_epoch * args.epochs, 0, []

    def features(ids: list[str], split: str, epoch: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        clips = [
            clip_frames(
                replace(job, sampling=replace(job.sampling, split=split, seed=epoch, temporal_views=1)),
                store.video(i).source,
                i,
            )
            for i in ids
        ]
        x = torch.stack(clips).to(device)  # [B, T, 3, S, S]
        b, t = x.shape[:2]
        with torch.inference_mode():
            out = backbone.forward_tensors(x.flatten(0, 1), requests)  # {name: [B*T, ...]}
        feats = {k: v.float().clone().view(b, t, *v.shape[1:]) for k, v in out.items()}  # [B, T, ...]
        labels = torch.tensor([store.video(i).label for i in ids], device=device)
        return feats, labels

    rng = np.random.default_rng(0)
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        head.train()
        order = rng.permutation(train_ids).tolist()
        for s in range(0, len(order), args.batch_size):
            feats, labels = features(order[s : s + args.batch_size], "train", epoch)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr=args.lr, min_lr=0.0, warmup_steps=steps_per_epoch, total_steps=total)
            loss = F.cross_entropy(head(feats), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        epoch_s.append(time.perf_counter() - t0)
    head.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(val_ids), args.batch_size):
            feats, labels = features(val_ids[s : s + args.batch_size], "test", 0)
            correct += int((head(feats).argmax(-1) == labels).sum())
    return {
        "s_per_epoch": float(np.mean(epoch_s)),
        "top1": correct / max(1, len(val_ids)),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "epochs": args.epochs,
    }


def _on_the_fly_child(store_path: str, extract: ExtractConfig, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(max(1, __import__("os").cpu_count() or 1))
    return on_the_fly(FeatureStore(store_path), extract, args, torch.device(args.device))


def from_store(store_path: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    overrides = [
        f"data.store={store_path}",
        f"data.frames={args.frames}",
        "data.stride=1",
        f"data.batch_size={args.batch_size}",
        "data.workers=0",
        "data.val_fraction=0.25",
        f"head.name={args.head}",
        f"head.options={args.head_options}",
        f"optim.epochs={args.epochs}",
        f"optim.lr={args.lr}",
        f"run.out={out}",
        "run.plots=false",
        "run.resume=false",
        f"run.device={args.device}",
        "run.log_every=100000",
    ]
    metrics = run_train(load_config(TrainConfig, None, overrides))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records if r.get("type") == "epoch"]
    return {
        "s_per_epoch": float(np.mean(seconds)),
        "top1": metrics["top1"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "epochs": args.epochs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_cost", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--backbone", default="timm:vit_tiny_patch16_224"
    )  # a real small ViT (random init, no download)
    p.add_argument("--device", default="cpu")
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--head", default="vivit_fe")
    p.add_argument("--head-options", default='{"depth": 2, "heads": 2}')
    p.add_argument("--tensors", nargs="+", default=["b-1.cls", "final.cls"])
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default="benchmarks/results/train_cost.json")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="train_cost_"))
    generate(
        work / "data",
        task="direction",
        videos=args.videos,
        seed=0,
        size=args.size,
        frames=3 * args.frames * args.stride // 2,
        fps=8.0,
        classes=2,
    )
    ex = load_config(
        ExtractConfig,
        None,
        [
            f"source={work / 'data' / 'labels.csv'}",
            f"store.path={work / 'f.zarr'}",
            f"backbone.name={args.backbone}",
            f"backbone.device={args.device}",
            f"tensors=[{','.join(args.tensors)}]",
            f"sampling.frames={args.frames}",
            f"sampling.stride={args.stride}",
            "sampling.split=train",
            "sampling.temporal_views=4",
            "run.progress=false",
        ],
    )
    t0 = time.perf_counter()
    stats = run_extract(ex)
    extract_s = time.perf_counter() - t0
    ctx = multiprocessing.get_context("spawn")  # each path in a fresh process: separate peak-memory figures
    with ctx.Pool(1) as pool:
        a = pool.apply(from_store, (work / "f.zarr", work / "head", args))
    with ctx.Pool(1) as pool:
        b = pool.apply(_on_the_fly_child, (str(work / "f.zarr"), ex, args))
    result = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": __import__("os").cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "args": vars(args),
        "extract_once_s": round(extract_s, 2),
        "extract_frames": stats.frames,
        "from_store": a,
        "on_the_fly": b,
        "speedup_per_epoch": b["s_per_epoch"] / a["s_per_epoch"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        f"| training path | s/epoch | top-1 | peak RSS MB |\n|---|---:|---:|---:|\n"
        f"| (a) from the store | {a['s_per_epoch']:.3f} | {a['top1']:.3f} | {a['peak_rss_mb']} |\n"
        f"| (b) on the fly from video | {b['s_per_epoch']:.3f} | {b['top1']:.3f} | {b['peak_rss_mb']} |\n"
        f"\nspeed-up per epoch (b / a): {result['speedup_per_epoch']:.1f}x (target >= 10x); "
        f"one-off extraction {extract_s:.1f} s; {args.backbone} on {args.device}, head {args.head}, "
        f"{args.videos} videos, {args.epochs} epochs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
