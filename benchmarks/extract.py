"""Stage-one extraction benchmark: end to end next to each component alone, in one run on the same inputs.

    synthetic videos ──► decode only   (the engine's worker pool and queue; no model, no store)
                     ──► model only    (forward_tensors on random frames + device->host copy [+ int8])
                     ──► write only    (PartWriter.add of the end-to-end run's own features, fresh store)
                     ──► end to end    (run_extract into a fresh store, warm fork server)
                     ──► naive loop    (per video: decode, forward, np.save, next)
    single videos of growing length ──► peak RSS of the process tree (one fresh subprocess per length)

efficiency = end-to-end frames/s / the slowest component's frames/s (target >= 0.85).

    python -m benchmarks.extract                         # CPU: timm ViT-Ti/16 at 224 px, random init
    python -m benchmarks.extract --backbone openclip_vit_b16.openai --device cuda --workers 12 \\
        --videos 96 --batch-frames 256                   # GPU: CLIP ViT-B/16, bf16 autocast

Writes ``benchmarks/results/extract.json`` and prints markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.extract import runner
from stages.extract.config import BackboneConfig, ExtractConfig, RunConfig, SamplingConfig, StoreConfig
from stages.extract.stage import decode_job, parse_requests, run_extract, summary
from stages.extract.worker import plan_item
from stages.models import Backbone, build_backbone
from stages.video import decode, sources, synth
from store import FeatureStore, PartWriter, VideoEntry, ViewRows, codecs, create_store, layout
from store.schema import StoreSpec

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.85  # the project's target: end to end within 15% of the slowest component
EVL_TENSORS = "b-5.tokens,b-4.tokens,b-3.tokens,b-2.tokens,b-1.tokens,final.cls"  # as clip_b16_evl.yaml
RANDOM_FALLBACK = {  # same architecture (same cost), random weights: when pretrained ones cannot be fetched
    "openclip_vit_b16.openai": "open_clip:ViT-B-16",
    "openclip_vit_b16.laion2b": "open_clip:ViT-B-16",
    "openclip_vit_l14.openai": "open_clip:ViT-L-14",
    "timm_vit_small_patch16_224.augreg_in21k_ft_in1k": "timm:vit_small_patch16_224",
    "timm_vit_base_patch16_224.augreg2_in21k_ft_in1k": "timm:vit_base_patch16_224",
}
warnings.filterwarnings("ignore", message=r"backbone .* has random weights")  # said once, in the report


# ------------------------------------------------------------------------------------------------ setup
def make_config(a: argparse.Namespace, source: Path, store: Path, **sampling: Any) -> ExtractConfig:
    """The stage-one config every measurement shares (``sampling`` overrides, e.g. mode="dense")."""
    s = SamplingConfig(mode=a.mode, frames=a.clip_frames, stride=a.stride, temporal_views=a.views)
    return ExtractConfig(
        source=str(source),
        tensors=a.tensors.split(","),
        pool=a.pool,
        sampling=replace(s, **sampling),
        store=StoreConfig(path=str(store), dtype=a.dtype, compression=a.compression, overwrite=True),
        backbone=BackboneConfig(
            name=a.backbone,
            pretrained=a.pretrained,
            device=a.device,
            batch_frames=a.batch_frames,
            random_init=a.pretrained is None,  # the fallback measures the architecture with random weights
        ),
        run=RunConfig(decode_workers=a.workers, progress=False, seed=a.seed),
    )


def load_backbone(a: argparse.Namespace) -> tuple[Backbone, str]:
    """Build ``a.backbone``; without downloadable weights fall back to random init of the same architecture
    (``a.backbone`` is rewritten so every measurement uses it). Returns the backbone and a weights note."""
    try:
        bb = build_backbone(a.backbone, pretrained=a.pretrained, device=a.device)
        return bb, bb.spec["pretrained"] or "random init"
    except Exception as e:  # noqa: BLE001 - no network / no cache: any loader error means "no weights"
        if a.backbone not in RANDOM_FALLBACK:
            raise
        note = (
            f"RANDOM init: pretrained weights of {a.backbone} unavailable ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}); measured {RANDOM_FALLBACK[a.backbone]} (same arch)"
        )
        print(f"NOTE: {note}", file=sys.stderr)
        a.backbone, a.pretrained = RANDOM_FALLBACK[a.backbone], None
        return build_backbone(a.backbone, device=a.device, random_init=True), note


def forkserver_start_s() -> float:
    """One-off cost of the engine's fork server (boot + preloading the worker module), then kept warm."""
    ctx = runner._context()
    t0 = time.perf_counter()
    p = ctx.Process(target=os.getpid)
    p.start()
    p.join()
    return time.perf_counter() - t0


def rate(frames: int, seconds: float) -> float:
    return round(frames / seconds, 2) if seconds > 0 else float("nan")


# ------------------------------------------------------------------------------------------- components
class _NoModel:
    """Stands in for the backbone in decode-only runs: zero-stride outputs of the right shapes, no compute."""

    device = torch.device("cpu")

    def __init__(self, backbone: Backbone, requests: list) -> None:
        self.shapes = backbone.output_shapes(requests)

    def output_shapes(self, requests: list) -> dict[str, tuple[int, ...]]:
        return self.shapes

    def forward_tensors(
        self, frames: torch.Tensor, requests: list, bf16: bool = True
    ) -> dict[str, torch.Tensor]:
        n = len(frames)
        return {k: torch.zeros((1, *s), dtype=torch.float16).expand(n, *s) for k, s in self.shapes.items()}


class _NoWriter:
    def add(self, video: Any, views: Any) -> None:
        pass

    def fail(self, *args: Any) -> None:
        pass


def decode_only(cfg: ExtractConfig, backbone: Backbone, requests: list) -> dict[str, Any]:
    """The engine itself (same worker pool, queue and packing) with the model and the store removed."""
    items, classes = sources.read_source(cfg.source)
    ex = runner.Extractor(
        _NoModel(backbone, requests),
        requests,
        decode_job(cfg, backbone),
        _NoWriter(),
        classes=classes,
        workers=cfg.run.decode_workers,
        batch_frames=cfg.backbone.batch_frames,
        quantise=False,
    )
    cpu0 = time.process_time()
    st = ex.run(items, list(range(len(items))))
    return {
        "frames": st.frames,
        "seconds": st.wall_s,
        "frames_per_s": rate(st.frames, st.wall_s),
        "per_worker_busy_frames_per_s": rate(st.frames, st.decode_s),
        "failed": st.failed,
        "cpu_s": time.process_time() - cpu0 + st.decode_s,
    }  # main + workers' busy time (1 thread each)


def to_host(y: torch.Tensor, quantise: bool) -> Any:
    """As the engine does (runner.Extractor._to_host): int8 on the device, else float16; then copy back."""
    if quantise:
        q, scale = codecs.quantise_int8(y)
        return q.cpu().numpy(), scale.cpu().numpy()
    return y.to(torch.float16).cpu().numpy()


def model_only(
    bb: Backbone, requests: list, batch: int, frames: int, quantise: bool, chunk: int
) -> dict[str, Any]:
    """Full batches of random float16 frames, packed from ``chunk``-frame pieces as the engine packs them."""
    s = bb.spec["input_size"]
    x = np.random.default_rng(0).standard_normal((batch, 3, s, s), np.float32).astype(np.float16)
    pieces = np.split(x, range(chunk, batch, chunk))  # what the workers send

    def step() -> None:
        x = torch.from_numpy(np.concatenate(pieces))  # [B, 3, S, S] float16
        if bb.device.type == "cuda":
            x = x.pin_memory().to(bb.device, non_blocking=True)
        with torch.inference_mode():
            for y in bb.forward_tensors(x.to(bb.device).float(), requests).values():
                to_host(y, quantise)

    step()  # warm-up: allocator, kernels, autocast caches
    n = max(2, math.ceil(frames / batch))
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    seconds = time.perf_counter() - t0
    return {
        "frames": n * batch,
        "seconds": seconds,
        "frames_per_s": rate(n * batch, seconds),
        "batch": batch,
        "cpu_s": time.process_time() - cpu0,
    }


def read_back(path: str) -> tuple[StoreSpec, dict, list[tuple[VideoEntry, list[ViewRows]]]]:
    """Everything a store holds, in the stored form (int8 + scale stay int8), to write it again."""
    fs = FeatureStore(path)
    out = []
    for rec in fs.videos:
        views = []
        for view, (start, n) in sorted(rec.views.items()):
            tensors: dict[str, Any] = {}
            for t in fs.spec.tensors:
                x = fs.read_raw(rec.part, t.name, start, start + n)
                tensors[t.name] = (
                    (x, fs.read_raw(rec.part, t.name + layout.SCALE_SUFFIX, start, start + n))
                    if t.quantised
                    else x
                )
            meta = fs.row_meta(rec.id, view)
            views.append(
                ViewRows(
                    view, tensors, meta["time_s"], meta["frame_index"], meta["padded"], rec.view_meta[view]
                )
            )
        out.append((VideoEntry(rec.id, rec.label, rec.source, rec.fps, rec.num_frames, rec.meta), views))
    return fs.spec, fs.frozen_weights(), out


def write_only(source_store: str, target: Path) -> dict[str, Any]:
    """PartWriter open, add every video, close (the final flush compresses and writes the open shards)."""
    spec, frozen, videos = read_back(source_store)
    shutil.rmtree(target, ignore_errors=True)
    create_store(target, spec, overwrite=True, frozen=frozen)
    frames = sum(len(v.time_s) for _, views in videos for v in views)
    t0, cpu0 = time.perf_counter(), time.process_time()
    with PartWriter(target, layout.part_name(0)) as w:
        for entry, views in videos:
            w.add(entry, views)
    seconds = time.perf_counter() - t0
    return {
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": rate(frames, seconds),
        "cpu_s": time.process_time() - cpu0,
        "stored_bytes": sum(
            f.stat().st_size for f in (target / layout.PARTS_GROUP).rglob("*") if f.is_file()
        ),
    }


def end_to_end(cfg: ExtractConfig) -> dict[str, Any]:
    """run_extract into a fresh store; also records the frames of each device batch (a diagnostic)."""
    shutil.rmtree(cfg.store.path, ignore_errors=True)  # a store with the same spec would be resumed
    batches, run_batch = [], runner.Extractor._run_batch

    def counted(self: runner.Extractor) -> None:
        before = self.stats.frames
        run_batch(self)
        batches.append(self.stats.frames - before)

    runner.Extractor._run_batch = counted  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        st = run_extract(cfg)
        seconds = time.perf_counter() - t0
    finally:
        runner.Extractor._run_batch = run_batch  # type: ignore[method-assign]
    return {
        "frames": st.frames,
        "seconds": seconds,
        "frames_per_s": rate(st.frames, seconds),
        "engine": summary(st),
        "batch_frames": batches,
    }


def naive(cfg: ExtractConfig, bb: Backbone, requests: list, out: Path) -> dict[str, Any]:
    """The peer baseline: one video at a time in one process: decode its frames, forward them as one batch,
    ``np.savez`` one file per video, next video (same decoder, sampling, preprocessing and model)."""
    items, _ = sources.read_source(cfg.source)
    job, quantise = decode_job(cfg, bb), cfg.store.dtype == "int8"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    frames, t0 = 0, time.perf_counter()
    for item in items:
        arrays: dict[str, np.ndarray] = {}
        with decode.open_video(sources.open_bytes(item), backend=job.decoder, name=item.path) as reader:
            plans, first = plan_item(job, reader, item)
            for p in plans:
                raw = reader.get_frames((p.frame_indices + first).tolist())  # [n, H, W, 3] uint8
                x = job.pre(raw, p.crop)  # [n, 3, S, S] float32
                with torch.inference_mode():
                    out = bb.forward_tensors(x.to(bb.device), requests)
                for name, y in out.items():
                    host = to_host(y, quantise)
                    arrays |= (
                        {f"v{p.view}/{name}.scale": host[1], f"v{p.view}/{name}": host[0]}
                        if quantise
                        else {f"v{p.view}/{name}": host}
                    )
                frames += len(x)
        np.savez(out / f"{item.id}.npz", **arrays)
    seconds = time.perf_counter() - t0
    return {"frames": frames, "seconds": seconds, "frames_per_s": rate(frames, seconds)}


# ------------------------------------------------------------------------------------------------ memory
def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _role(p: Any, main: int, roles: dict[int, str]) -> str:
    """forkserver = the main process's fork-server child; worker = a child of it (same command line)."""
    try:
        parent, cmd = p.ppid(), " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - gone already
        return "other"
    if roles.get(parent) == "forkserver":
        return "worker"
    return "forkserver" if parent == main and "forkserver" in cmd else "other"


def watch_tree(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd``; sample its process tree every 20 ms: peak RSS (VmHWM) of the main process and of each
    decode worker, and of the whole tree (sum of sampled RSS; pages shared after fork counted per process)."""
    import psutil

    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    main, roles, hwm, tree = psutil.Process(proc.pid), {}, {}, 0
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        hwm[proc.pid] = max(hwm.get(proc.pid, 0), _status_kb(proc.pid, "VmHWM"))
        try:
            kids = main.children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        total = _status_kb(proc.pid, "VmRSS")
        for k in kids + kids:  # twice: a worker listed before its fork server is recognised the second time
            if roles.get(k.pid) not in ("worker", "forkserver"):
                roles[k.pid] = _role(k, proc.pid, roles)
        for k in kids:
            hwm[k.pid] = max(hwm.get(k.pid, 0), _status_kb(k.pid, "VmHWM"))
            total += _status_kb(k.pid, "VmRSS")
        tree = max(tree, total)
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    workers = [hwm[p] for p, r in roles.items() if r == "worker"]
    return {
        "rc": proc.returncode,
        "main_peak_mb": round(hwm.get(proc.pid, 0) / 1024, 1),
        "worker_peak_mb": round(max(workers, default=0) / 1024, 1),
        "workers_seen": len(workers),
        "tree_peak_mb": round(tree / 1024, 1),
    }


def memory_vs_length(a: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rows = []
    for n in (int(x) for x in a.memory_lengths.split(",") if x):
        src = work / f"long{n}"
        synth.generate(src, task="appearance", videos=1, seed=a.seed, size=a.memory_size, frames=n, fps=a.fps)
        child = {"source": str(src / "labels.csv"), "store": str(work / f"long{n}.zarr"), "args": vars(a)}
        got = watch_tree(
            [sys.executable, "-m", "benchmarks.extract", "--memory-child", json.dumps(child)],
            work / f"long{n}.log",
        )
        log = (work / f"long{n}.log").read_text()
        if got["rc"] != 0:
            raise RuntimeError(f"memory child for {n} frames failed:\n{log[-3000:]}")
        result = json.loads(log.strip().splitlines()[-1])
        rows.append(
            {
                "video_frames": n,
                **result,
                **got,
                "whole_video_uint8_mb": round(n * a.memory_size**2 * 3 / 2**20, 1),
            }
        )
    return rows


def memory_child(spec: dict[str, Any]) -> None:
    """One fresh process: dense extraction of a single video with the memory backbone; prints JSON."""
    a = argparse.Namespace(**spec["args"])
    a.backbone, a.pretrained, a.tensors = a.memory_backbone, None, a.memory_tensors
    cfg = make_config(a, Path(spec["source"]), Path(spec["store"]), mode="dense")
    shutil.rmtree(cfg.store.path, ignore_errors=True)
    t0 = time.perf_counter()
    st = run_extract(cfg)
    bb = build_backbone(a.backbone, device="cpu", random_init=True)
    shapes = bb.output_shapes(bb.resolve(parse_requests(cfg.tensors, cfg.pool)))
    per_frame = sum(int(np.prod(s)) for s in shapes.values()) * (1 if a.dtype == "int8" else 2)
    print(
        json.dumps(
            {
                "frames": st.frames,
                "seconds": round(time.perf_counter() - t0, 2),
                "feature_buffer_mb": round(st.frames * per_frame / 2**20, 2),
            }
        )
    )


# ------------------------------------------------------------------------------------------------ report
def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _run(["lscpu"]).splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    import av
    import decord
    import zarr

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "zarr": zarr.__version__,
        "decord": decord.__version__,
        "av": av.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def verdict(r: dict[str, Any]) -> dict[str, Any]:
    """Efficiency = end to end / slowest component. Two references beside it: 1 / sum(1 / rate), the rate of
    running the components one after another (no overlap); and on CPU the ceiling cores / (CPU seconds per
    frame of all components): what perfect overlap reaches when model, decoders and writer share the cores."""
    comps = {k: r[k]["frames_per_s"] for k in ("decode_only", "model_only", "write_only")}
    slowest, e2e = min(comps, key=comps.get), r["end_to_end"]["frames_per_s"]
    serial = 1 / sum(1 / v for v in comps.values())
    cpu = sum(r[k]["cpu_s"] / r[k]["frames"] for k in comps) if r["device"] == "cpu" else None
    ceiling = (os.cpu_count() or 1) / cpu if cpu else None  # every component on the same cores
    return {
        "slowest": slowest,
        "efficiency": round(e2e / comps[slowest], 3),
        "target": TARGET,
        "pass": e2e / comps[slowest] >= TARGET,
        "no_overlap_frames_per_s": round(serial, 2),
        "vs_no_overlap": round(e2e / serial, 3),
        "cpu_s_per_frame": {k: round(r[k]["cpu_s"] / r[k]["frames"], 4) for k in comps},
        "cpu_ceiling_frames_per_s": round(ceiling, 2) if ceiling else None,
        "vs_attainable": round(e2e / min(ceiling, comps[slowest]), 3) if ceiling else None,
        "speedup_vs_naive": round(e2e / r["naive"]["frames_per_s"], 2) if "naive" in r else None,
    }


def tables(r: dict[str, Any]) -> str:
    a, v, e, eng = r["args"], r["verdict"], r["end_to_end"], r["end_to_end"]["engine"]
    notes = {
        "decode_only": f"{a['workers']} workers -> main process: the engine without model and store "
        f"({r['decode_only']['per_worker_busy_frames_per_s']} per busy worker-second)",
        "model_only": f"forward_tensors, batch {a['batch_frames']}, packing + device->host included",
        "write_only": f"PartWriter.add + close; {r['write_only']['stored_bytes'] / 2**20:.1f} MiB",
        "end_to_end": "run_extract, warm fork server: **used for the ratio**",
        "naive": "per video: decode, forward, np.savez, next",
    }
    cold = e["seconds"] + r["forkserver_start_s"]
    lines = [
        f"{r['backbone']} ({r['weights']}) on {r['device']}; {a['videos']} videos x "
        f"{a['video_frames']} frames at {a['size']} px, {a['mode']} sampling -> {e['frames']} frames; "
        f"tensors {a['tensors']}; {a['dtype']} store ({a['compression']}); batch {a['batch_frames']}; "
        f"{a['workers']} decode workers.",
        "",
        "| measurement | frames | s | frames/s | what |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {k.replace('_', ' ')} | {r[k]['frames']} | {r[k]['seconds']:.2f} "
        f"| {r[k]['frames_per_s']:.1f} | {notes[k]} |"
        for k in notes
        if k in r
    ]
    lines += [
        f"| end to end incl. start-up | {e['frames']} | {cold:.2f} | {e['frames'] / cold:.1f} "
        f"| + {r['forkserver_start_s']:.2f} s fork-server start (one-off per process) |",
        "",
        f"**efficiency = {e['frames_per_s']:.1f} / {v['slowest'].replace('_', ' ')} "
        f"{r[v['slowest']]['frames_per_s']:.1f} = {v['efficiency']:.2f}: "
        f"{'PASS' if v['pass'] else 'FAIL'} (target >= {TARGET})**. "
        f"No-overlap rate 1/sum(1/rate) = {v['no_overlap_frames_per_s']:.1f} "
        f"frames/s (end to end = {v['vs_no_overlap']:.2f}x it)"
        + (f"; {v['speedup_vs_naive']:.2f}x the naive loop." if v["speedup_vs_naive"] else "."),
        "",
    ]
    if v["cpu_ceiling_frames_per_s"]:
        c, top = v["cpu_s_per_frame"], v["cpu_ceiling_frames_per_s"]
        lines += [
            f"CPU seconds per frame: decode {c['decode_only']}, model {c['model_only']}, write "
            f"{c['write_only']} -> all on {r['machine']['cpu_count']} cores at most {top:.1f} "
            f"frames/s; end to end = {v['vs_attainable']:.2f} of min(slowest component, that).",
            "",
        ]
    lines += [
        f"Device batches of the end-to-end run (frames): {e['batch_frames']}.",
        "",
        f"Engine counters (frames per busy second): decode {eng['decode_frames_per_busy_s']} per "
        f"worker, model {eng['model_frames_per_s']}, writer thread {eng['write_frames_per_s']}. Engine "
        f"wall {eng['wall_s']:.2f} s; the other {e['seconds'] - eng['wall_s']:.2f} s of run_extract "
        f"are serial: backbone build (~{r['backbone_rebuild_s']:.2f} s warm), store creation, the "
        "writer's final flush (shards still open at the end), finalize.",
        "",
    ]
    if r.get("memory"):
        lines += [
            f"Peak RSS vs video length ({a['memory_size']} px, dense, {a['memory_backbone']}, "
            f"{a['memory_tensors']}; one fresh process per length; MB):",
            "",
            "| video frames | main | decode worker | process tree | whole video as uint8 | feature buffer |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {m['video_frames']} | {m['main_peak_mb']} | {m['worker_peak_mb']} "
            f"| {m['tree_peak_mb']} | {m['whole_video_uint8_mb']} | {m['feature_buffer_mb']} |"
            for m in r["memory"]
        ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.extract",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--backbone", default="timm:vit_tiny_patch16_224", help="registry name or family:model")
    p.add_argument("--pretrained", default=None, help="pretrained tag (None: the entry's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float16", choices=["float16", "int8"], help="store dtype")
    p.add_argument("--compression", default="zstd", choices=["zstd", "lz4", "none"])
    p.add_argument("--tensors", default=EVL_TENSORS, help="comma-separated; default as clip_b16_evl.yaml")
    p.add_argument("--pool", type=int, default=4, help="grid of 'pooled' tensors")
    p.add_argument("--videos", type=int, default=24, help="synthetic videos (2-core CPU default: ~3 min run)")
    p.add_argument("--video-frames", type=int, default=64, help="frames per synthetic video")
    p.add_argument("--size", type=int, default=128, help="synthetic frame side, px")
    p.add_argument("--fps", type=float, default=8.0, help="synthetic frame rate (keyframe every 32 frames)")
    p.add_argument("--mode", default="clips", choices=["clips", "dense"], help="sampling mode")
    p.add_argument("--clip-frames", type=int, default=8, help="T per clip (clips mode)")
    p.add_argument("--stride", type=int, default=4, help="source frames between clip frames")
    p.add_argument("--views", type=int, default=1, help="temporal views per video (clips mode)")
    p.add_argument("--batch-frames", type=int, default=64, help="frames per device batch")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decode processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="", help="comma list of parts to skip: naive, memory")
    p.add_argument("--memory-lengths", default="64,256,1024,4096", help="video lengths (frames); '' skips")
    p.add_argument("--memory-size", type=int, default=64, help="frame side of the long videos, px")
    p.add_argument("--memory-backbone", default="test_timm_vit", help="cheap model: decode dominates")
    p.add_argument("--memory-tensors", default="b-1.tokens,final.cls")
    p.add_argument("--workdir", default=None, help="keep inputs and stores here (default: a temp dir)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "extract.json"))
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.memory_child:
        memory_child(json.loads(a.memory_child))
        return 0
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_extract_"))
    r: dict[str, Any] = {"machine": machine(), "load_before": os.getloadavg(), "started": time.ctime()}
    try:
        t0 = time.perf_counter()
        synth.generate(
            work / "videos",
            task="appearance",
            videos=a.videos,
            seed=a.seed,
            size=a.size,
            frames=a.video_frames,
            fps=a.fps,
        )
        r["synth_s"] = round(time.perf_counter() - t0, 2)
        r["forkserver_start_s"] = round(forkserver_start_s(), 3)
        t0 = time.perf_counter()
        bb, r["weights"] = load_backbone(a)
        r["backbone_build_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        build_backbone(
            a.backbone, pretrained=a.pretrained, device=a.device, random_init=True
        )  # as run_extract
        r["backbone_rebuild_s"] = round(time.perf_counter() - t0, 2)
        r["backbone"], r["device"], r["args"] = a.backbone, str(bb.device), vars(a)
        cfg = make_config(a, work / "videos" / "labels.csv", work / "e2e.zarr")
        requests = bb.resolve(parse_requests(cfg.tensors, cfg.pool))
        r["decode_only"] = _step("decode only", decode_only, cfg, bb, requests)
        r["end_to_end"] = _step("end to end", end_to_end, cfg)
        r["model_only"] = _step(
            "model only",
            model_only,
            bb,
            requests,
            a.batch_frames,
            r["end_to_end"]["frames"],
            a.dtype == "int8",
            decode_job(cfg, bb).chunk,
        )
        r["write_only"] = _step("write only", write_only, cfg.store.path, work / "write.zarr")
        if "naive" not in a.skip:
            r["naive"] = _step("naive loop", naive, cfg, bb, requests, work / "naive")
        r["verdict"] = verdict(r)
        if "memory" not in a.skip and a.memory_lengths:
            r["memory"] = _step("memory vs length", memory_vs_length, a, work)
        r["load_after"] = os.getloadavg()
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = tables(r)
    r["markdown"] = text
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(r, indent=2, default=str))
    m = r["machine"]
    print(
        f"\n## Extraction ({m['cpu_model']}, {m['cpu_count']} cores, GPU {m['gpu']}; torch {m['torch']}; "
        f"load {r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after)\n\n{text}\n\n"
        f"wrote {a.out}"
    )
    return 0


def _step(name: str, fn: Any, *args: Any) -> Any:
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
    return fn(*args)


if __name__ == "__main__":
    sys.exit(main())
