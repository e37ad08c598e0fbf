"""``twostage plan CONFIG [key=value ...] [--epochs N]``: before extracting, what caching costs and whether
it pays: bytes per frame and store size for the configured tensors (float16, int8, CLS only), disk read time
per epoch from a probe of the disk where the store will live, backbone compute from a probe of the model on
this machine's device, decode speed from a probe of a few of the videos, and the cheapest option for the
planned epochs."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from stages.core.config import load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="twostage plan",
        description=(__doc__ or "").split("\n\n")[0].split(": ", 1)[1].replace("\n", " "),
        epilog="Example: twostage plan configs/extract/clip_b16_evl.yaml source=k400/train.csv --epochs 30",
    )
    p.add_argument("config", help="the extraction config you would run (configs/extract/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, as for twostage extract")
    p.add_argument("--epochs", type=int, default=30, help="planned training epochs (default 30)")
    p.add_argument("--clip-frames", type=int, default=None, help="frames a head reads per video and epoch "
                   "(default sampling.frames)")  # fmt: skip
    p.add_argument("--probe-videos", type=int, default=4, help="videos decoded to time decoding (default 4)")
    p.add_argument(
        "--disk-mb", type=int, default=128, help="size of the disk probe's temp file (default 128)"
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from stages.core.errors import ConfigError
    from stages.extract.config import ExtractConfig

    cfg = load_config(ExtractConfig, args.config, args.overrides)
    if args.epochs < 1 or args.probe_videos < 1 or args.disk_mb < 1:
        raise ConfigError("--epochs, --probe-videos and --disk-mb must be >= 1")
    plan = make_plan(cfg, args)
    from stages.extract.plan import table

    print(json.dumps(asdict(plan), indent=1) if args.json else table(plan))
    if not args.json:
        print(f"\ncheapest for {args.epochs} epochs: {plan.cheapest}")
    return 0


def make_plan(cfg: Any, args: argparse.Namespace) -> Any:
    """Probe this machine for ``cfg`` and estimate every option."""
    from stages.extract import plan as planning
    from stages.extract.stage import decode_job, parse_requests
    from stages.models import build_backbone
    from stages.video import sources

    items, _ = sources.read_source(cfg.source)
    device = "cuda" if cfg.backbone.device == "auto" and _cuda() else cfg.backbone.device
    device = "cpu" if device == "auto" else device
    backbone = build_backbone(cfg.backbone.name, pretrained=cfg.backbone.pretrained,
                              weights_file=cfg.backbone.weights_file, device=device,
                              random_init=cfg.backbone.random_init)  # fmt: skip
    requests = backbone.resolve(parse_requests(cfg.tensors, cfg.pool))
    shapes = backbone.output_shapes(requests)
    cls = {n: s for n, s in shapes.items() if n.endswith(".cls")} or {
        "final.cls": (backbone.spec["embed_dim"],)
    }
    per_frame = {
        "cache float16": planning.bytes_per_frame(shapes, "float16"),
        "cache int8": planning.bytes_per_frame(shapes, "int8"),
        "cache CLS only": planning.bytes_per_frame(cls, "float16"),
    }
    job = decode_job(cfg, backbone)
    frames, decode_fps = _probe_decode(job, items[: args.probe_videos], cfg)
    write, read = planning.probe_disk(Path(cfg.store.path).resolve().parent, args.disk_mb)
    model_fps = planning.probe_model(backbone, requests, min(cfg.backbone.batch_frames, 32),
                                     int(backbone.spec["input_size"]))  # fmt: skip
    s = cfg.sampling
    clip = args.clip_frames or (s.frames if s.mode == "clips" else min(frames, 32))
    workload = planning.Workload(len(items), frames, clip, args.epochs, per_frame)
    workers = max(1, cfg.run.decode_workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    shared = backbone.device.type == "cpu"  # the model's threads and the decode workers share the cores
    probes = planning.Probes(write, read, model_fps, decode_fps * workers, cpu_cores=cores if shared else 0,
                             decode_workers=workers, model_threads=_threads() if shared else 1)  # fmt: skip
    tokens = any(not n.endswith(".cls") for n in shapes)
    return planning.estimate(workload, probes, tokens_needed=tokens)


def _probe_decode(job: Any, items: list[Any], cfg: Any) -> tuple[float, float]:
    """Stored frames per video (mean over the probed videos) and one decode worker's frames/s."""
    from stages.core.errors import ConfigError
    from stages.extract import worker

    sent: list[tuple] = []
    t0 = time.perf_counter()
    slot, started = SimpleNamespace(value=-1), SimpleNamespace(value=0.0)
    for n in range(len(items)):
        worker.run_task(replace(job), items, n, sent.append, slot, started)
    seconds = time.perf_counter() - t0
    rows = [m for m in sent if m[0] == "frames"]
    done = {m[1] for m in sent if m[0] == "done"}
    if not done:
        fails = [m[3].splitlines()[0] for m in sent if m[0] == "fail"]
        raise ConfigError(f"none of the {len(items)} probed videos of {cfg.source} decoded: {fails[:2]}")
    frames = sum(len(m[4]) for m in rows)
    return frames / len(done), frames / seconds


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
