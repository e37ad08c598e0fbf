"""Store I/O next to raw sequential I/O of the same bytes on the same disk (target >= 0.7).

    python -m benchmarks.store_io                     # defaults: 8 videos x 64 frames x (197, 768) fp16
    python -m benchmarks.store_io --videos 4 --frames 32 --dir /scratch

What it measures, in one run and one folder (``--dir``, default: a temp folder under the cwd):

- raw: ``ndarray.tofile`` of the float16 frames + fsync, then sequential ``np.fromfile`` reads in
  16-frame chunks, and the same random 8-frame clips (stride 2) as the store reads;
- store, per compression (zstd, lz4, none): ``PartWriter`` adding the same videos (+ fsync of its files),
  ``FeatureStore.iter_chunks`` (16 frames) over every video, ``read_clips`` of 8 frames stride 2 at
  random positions in batches of 16;
- integrity on read: ``FeatureStore.check`` of every video (read + CRC-32 + NaN/Inf scan), what a
  training loader pays once per video and loader process (``data.integrity=check``, the default);
- bytes per frame, logical and on disk (zstd), for float16 tokens, int8 tokens (+ scale) and a 7x7
  pooled patch grid (from the 14x14 grid).

MB = 10^6 bytes of *logical* (uncompressed float16) data delivered. Before each read phase the page
cache of the files read is dropped (``posix_fadvise(DONTNEED)`` after fsync; ``--cache drop`` writes
/proc/sys/vm/drop_caches instead, ``--cache warm`` keeps it): the JSON records which. The data is
random (normal with a per-channel scale, like activations) and compresses worse than real features.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from store import FeatureStore, PartWriter, StoreSpec, TensorSpec, VideoEntry, ViewRows, create_store, layout

RESULTS = Path(__file__).resolve().parent / "results" / "store_io.json"
TARGET = 0.7  # the project's target: store throughput >= 0.7 x raw sequential I/O
CHUNK = 16  # frames per sequential read, a typical memory-head chunk
CLIP_T, CLIP_STRIDE, CLIP_BATCH = 8, 2, 16  # an 8-frame clip at stride 2, batches of 16 clips
MB = 1e6


# -- data -------------------------------------------------------------------------------------------
def make_videos(n: int, frames: int, tokens: int, width: int, seed: int) -> list[np.ndarray]:
    """Activation-like float16 frames: normal, per-channel log-normal scale, a few large channels."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0.0, 0.7, size=width)).astype(np.float32)
    scale[rng.choice(width, size=max(1, width // 100), replace=False)] *= 20.0  # outlier channels
    return [
        (rng.standard_normal((frames, tokens, width), dtype=np.float32) * scale).astype(np.float16)
        for _ in range(n)
    ]


def pooled(x: np.ndarray, p: int) -> np.ndarray:
    """Average-pool the g x g patch grid (CLS excluded) to p x p: [T, L, d] -> [T, p*p, d]."""
    t, length, d = x.shape
    g = int(round((length - 1) ** 0.5))
    grid = x[:, 1:].astype(np.float32).reshape(t, p, g // p, p, g // p, d)  # [T, p, g/p, p, g/p, d]
    return grid.mean(axis=(2, 4)).reshape(t, p * p, d)  # [T, p*p, d]


def spec_for(tensors: tuple[TensorSpec, ...], compression: str, shard_mb: float) -> StoreSpec:
    return StoreSpec(
        backbone={"name": "benchmark"},
        preprocessing={},
        sampling={"mode": "dense"},
        tensors=tensors,
        storage={"compression": compression, "shard_mb": shard_mb},
    )


def rows(name: str, x: np.ndarray) -> ViewRows:
    n = len(x)
    return ViewRows(view=0, tensors={name: x}, time_s=np.arange(n) / 25.0, frame_index=np.arange(n))


# -- disk and cache ---------------------------------------------------------------------------------
def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def fsync_files(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def drop_cache(paths: list[Path], mode: str) -> str:
    """Evict ``paths`` from the page cache; returns what was actually done."""
    if mode == "warm":
        return "warm"
    fsync_files(paths)
    if mode == "drop":
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return "drop_caches"
        except OSError:
            mode = "fadvise"
    if not hasattr(os, "posix_fadvise"):
        return "warm (no posix_fadvise)"
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise-dontneed"


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def clip_starts(lengths: list[int], batches: int, seed: int) -> list[list[tuple[int, int]]]:
    """Random (video, first frame) per clip, ``batches`` batches of CLIP_BATCH clips."""
    rng = np.random.default_rng(seed)
    span = (CLIP_T - 1) * CLIP_STRIDE + 1
    return [
        [
            (v, int(rng.integers(0, lengths[v] - span + 1)))
            for v in rng.integers(0, len(lengths), size=CLIP_BATCH)
        ]
        for _ in range(batches)
    ]


# -- raw baseline -----------------------------------------------------------------------------------
def raw_io(folder: Path, videos: list[np.ndarray], batches: list, cache: str) -> dict[str, Any]:
    folder.mkdir(parents=True)
    paths = [folder / f"v{i:04d}.f16" for i in range(len(videos))]

    def write() -> None:
        for path, x in zip(paths, videos, strict=True):
            with open(path, "wb") as f:
                x.tofile(f)
                f.flush()
                os.fsync(f.fileno())

    frame_shape, frame_bytes = videos[0].shape[1:], videos[0][0].nbytes
    logical = sum(x.nbytes for x in videos)

    def read_seq() -> None:
        for path, x in zip(paths, videos, strict=True):
            with open(path, "rb") as f:
                for _ in range(0, len(x), CHUNK):
                    np.fromfile(f, dtype=np.float16, count=CHUNK * int(np.prod(frame_shape)))

    def read_clips() -> None:
        span = (CLIP_T - 1) * CLIP_STRIDE + 1
        for batch in batches:
            out = [
                np.fromfile(
                    paths[v], dtype=np.float16, count=span * int(np.prod(frame_shape)), offset=s * frame_bytes
                ).reshape(span, *frame_shape)[::CLIP_STRIDE]
                for v, s in batch
            ]
            np.stack(out)  # [B, T, L, d], like read_clips

    t_write = timed(write)
    mode = drop_cache(paths, cache)
    t_seq = timed(read_seq)
    drop_cache(paths, cache)
    t_clips = timed(read_clips)
    clip_bytes = len(batches) * CLIP_BATCH * CLIP_T * frame_bytes
    return {
        "write_MBps": logical / MB / t_write,
        "seq_read_MBps": logical / MB / t_seq,
        "clip_read_MBps": clip_bytes / MB / t_clips,
        "logical_bytes": logical,
        "cache": mode,
        "disk_bytes": sum(p.stat().st_size for p in paths),
    }


# -- store ------------------------------------------------------------------------------------------
def store_io(
    path: Path, videos: list[np.ndarray], batches: list, compression: str, shard_mb: float, cache: str
) -> dict[str, Any]:
    name = "b11.tokens"
    tensor = TensorSpec(name, "b11", "tokens", tuple(videos[0].shape[1:]))
    create_store(path, spec_for((tensor,), compression, shard_mb))
    part_dir = path / layout.part_path("p0000")

    def write() -> None:
        with PartWriter(path, "p0000") as w:
            for i, x in enumerate(videos):
                w.add(VideoEntry(f"v{i:04d}", 0, f"v{i:04d}.mp4", 25.0, len(x)), [rows(name, x)])
        fsync_files(files_under(part_dir))

    def read_seq() -> None:
        fs = FeatureStore(path)
        for i in range(len(videos)):
            for _ in fs.iter_chunks(f"v{i:04d}", CHUNK, tensors=[name], dtype=np.float16):
                pass

    def read_clips() -> None:
        fs = FeatureStore(path)
        frames = np.arange(CLIP_T) * CLIP_STRIDE
        for batch in batches:
            fs.read_clips([(f"v{v:04d}", 0, s + frames) for v, s in batch], tensors=[name], dtype=np.float16)

    def check() -> None:  # integrity on read: what a loader pays the first time it reads each video
        fs = FeatureStore(path)
        for i in range(len(videos)):
            assert not fs.check(f"v{i:04d}", tensors=[name])

    logical = sum(x.nbytes for x in videos)
    t_write = timed(write)
    mode = drop_cache(files_under(part_dir), cache)
    t_seq = timed(read_seq)
    drop_cache(files_under(part_dir), cache)
    t_clips = timed(read_clips)
    drop_cache(files_under(part_dir), cache)
    t_check = timed(check)
    frames = sum(len(x) for x in videos)
    disk = sum(p.stat().st_size for p in files_under(part_dir / name))
    clip_bytes = len(batches) * CLIP_BATCH * CLIP_T * videos[0][0].nbytes
    return {
        "write_MBps": logical / MB / t_write,
        "seq_read_MBps": logical / MB / t_seq,
        "clip_read_MBps": clip_bytes / MB / t_clips,
        "check_MBps": logical / MB / t_check,
        "logical_bytes": logical,
        "cache": mode,
        "disk_bytes": disk,
        "disk_bytes_per_frame": disk / frames,
        "logical_bytes_per_frame": tensor.bytes_per_frame,
    }


def bytes_per_frame(folder: Path, videos: list[np.ndarray], shard_mb: float) -> dict[str, dict[str, float]]:
    """Logical and on-disk (zstd) bytes per frame for float16 tokens, int8 tokens and a pooled grid."""
    length, width = videos[0].shape[1:]
    g = int(round((length - 1) ** 0.5))
    p = max(1, g // 2)
    options = {
        "float16 tokens": (TensorSpec("b11.tokens", "b11", "tokens", (length, width)), lambda x: x),
        "int8 tokens + fp16 scale": (
            TensorSpec("b11.tokens", "b11", "tokens", (length, width), dtype="int8"),
            lambda x: x,
        ),
        f"float16 pooled {p}x{p} of {g}x{g}": (
            TensorSpec("b11.pooled", "b11", "pooled", (p * p, width), pool=p),
            lambda x: pooled(x, p),
        ),
    }
    out = {}
    for i, (label, (tensor, transform)) in enumerate(options.items()):
        path = folder / f"option{i}.zarr"
        create_store(path, spec_for((tensor,), "zstd", shard_mb))
        with PartWriter(path, "p0000") as w:
            for j, x in enumerate(videos):
                w.add(VideoEntry(f"v{j:04d}", 0, "", 25.0, len(x)), [rows(tensor.name, transform(x))])
        part = path / layout.part_path("p0000")
        disk = sum(
            q.stat().st_size
            for q in part.rglob("*")
            if q.is_file() and q.parts[len(part.parts)].startswith(tensor.name)
        )  # the values and, for int8, the scale array
        frames = sum(len(x) for x in videos)
        out[label] = {"logical": tensor.bytes_per_frame, "on_disk_zstd": disk / frames}
    return out


def codec_probe(x: np.ndarray) -> dict[str, dict[str, float]]:
    """Compression ratio and speed of Blosc variants on one video (outside zarr), to read the table."""
    from numcodecs import Blosc

    from store.codecs import Checksum

    out = {}
    for label, cname, shuffle in (
        ("zstd-bitshuffle (store: compression=zstd)", "zstd", Blosc.BITSHUFFLE),
        ("zstd-byteshuffle", "zstd", Blosc.SHUFFLE),
        ("lz4-byteshuffle (store: compression=lz4, default)", "lz4", Blosc.SHUFFLE),
        ("lz4-bitshuffle", "lz4", Blosc.BITSHUFFLE),
    ):
        codec = Blosc(cname=cname, clevel=3 if cname == "zstd" else 5, shuffle=shuffle, typesize=2)
        t0 = time.perf_counter()
        size = len(codec.encode(x))
        out[label] = {"ratio": size / x.nbytes, "encode_MBps": x.nbytes / MB / (time.perf_counter() - t0)}
    t_hash = timed(lambda: Checksum.of([("x", x)]))
    out[f"{Checksum.algo} video checksum (store)"] = {"ratio": 1.0, "encode_MBps": x.nbytes / MB / t_hash}
    return out


# -- report -----------------------------------------------------------------------------------------
def machine(folder: Path) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor(),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_1m_at_start"] = os.getloadavg()[0]  # other work on the machine skews the figures
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    for cmd, key in ((["lscpu"], "cpu_model"), (["df", "-T", str(folder)], "disk")):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if key == "cpu_model":
            info[key] = next(
                (
                    ln.split(":", 1)[1].strip()
                    for ln in text.splitlines()
                    if ln.lower().startswith("model name")
                ),
                None,
            )
        else:
            info[key] = " ".join(text.splitlines()[-1].split()[:2]) if text.strip() else None
    info["versions"] = {name: importlib.metadata.version(name) for name in ("numpy", "zarr", "numcodecs")}
    return info


def table(result: dict[str, Any]) -> Iterator[str]:
    raw = result["raw"]
    yield (
        "| compression | write MB/s | raw write MB/s | write ratio | seq read MB/s | raw seq read MB/s | "
        "read ratio | clip read MB/s | raw clip read MB/s | clip ratio | integrity check MB/s | disk B/frame "
        "| target >= 0.7 |"
    )
    yield "|" + "---|" * 13
    for comp, r in result["store"].items():
        ok = r["write_ratio"] >= TARGET and r["read_ratio"] >= TARGET
        yield (
            f"| {comp} | {r['write_MBps']:.0f} | {raw['write_MBps']:.0f} | {r['write_ratio']:.2f} | "
            f"{r['seq_read_MBps']:.0f} | {raw['seq_read_MBps']:.0f} | {r['read_ratio']:.2f} | "
            f"{r['clip_read_MBps']:.0f} | {raw['clip_read_MBps']:.0f} | {r['clip_ratio']:.2f} | "
            f"{r.get('check_MBps', float('nan')):.0f} | {r['disk_bytes_per_frame']:,.0f} | "
            f"{'PASS' if ok else 'FAIL'} |"
        )
    yield ""
    yield "| codec on the same data (numcodecs, 1 thread) | disk / logical | MB/s |"
    yield "|---|---|---|"
    for label, c in result["codec_probe"].items():
        yield f"| {label} | {c['ratio']:.3f} | {c['encode_MBps']:.0f} |"
    yield ""
    yield "| storage option | logical B/frame | on disk B/frame (zstd) | disk / float16 logical |"
    yield "|---|---|---|---|"
    base = next(iter(result["bytes_per_frame"].values()))["logical"]
    for label, b in result["bytes_per_frame"].items():
        yield f"| {label} | {b['logical']:,} | {b['on_disk_zstd']:,.0f} | {b['on_disk_zstd'] / base:.2f} |"


def run(args: argparse.Namespace) -> dict[str, Any]:
    parent = Path(args.dir or os.getcwd())
    folder = Path(tempfile.mkdtemp(prefix="store_io_", dir=parent))
    try:
        videos = make_videos(args.videos, args.frames, args.tokens, args.width, args.seed)
        batches = clip_starts([len(x) for x in videos], args.clip_batches, args.seed + 1)
        result: dict[str, Any] = {
            "config": {k: v for k, v in vars(args).items() if k not in ("out",)},
            "machine": machine(folder),
            "folder": str(folder),
            "note": "random activation-like data: compresses worse than real features (disk B/frame is an "
            "upper bound); MB = 1e6 logical float16 bytes",
            "raw": raw_io(folder / "raw", videos, batches, args.cache),
            "store": {},
        }
        for comp in args.compressions:
            r = store_io(folder / f"{comp}.zarr", videos, batches, comp, args.shard_mb, args.cache)
            raw = result["raw"]
            r |= {
                "write_ratio": r["write_MBps"] / raw["write_MBps"],
                "read_ratio": r["seq_read_MBps"] / raw["seq_read_MBps"],
                "clip_ratio": r["clip_read_MBps"] / raw["clip_read_MBps"],
            }
            r["pass"] = r["write_ratio"] >= TARGET and r["read_ratio"] >= TARGET
            result["store"][comp] = r
        result["codec_probe"] = codec_probe(videos[0])
        result["bytes_per_frame"] = bytes_per_frame(
            folder / "options", videos[: args.option_videos], args.shard_mb
        )
        return result
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.store_io",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--dir", default=None, help="parent folder of the temp folder (default: the cwd)")
    ap.add_argument("--videos", type=int, default=8, help="videos per store (default 8: ~150 MB)")
    ap.add_argument("--frames", type=int, default=64, help="frames per video")
    ap.add_argument("--tokens", type=int, default=197, help="tokens per frame (1 + g*g; 197 = ViT-B/16)")
    ap.add_argument("--width", type=int, default=768, help="channels per token")
    ap.add_argument("--compressions", nargs="+", default=["zstd", "lz4", "none"])
    ap.add_argument("--shard-mb", type=float, default=64.0, help="the store's default shard size")
    ap.add_argument("--clip-batches", type=int, default=10, help="random clip batches of 16 clips")
    ap.add_argument("--option-videos", type=int, default=2, help="videos for the bytes-per-frame options")
    ap.add_argument(
        "--cache",
        choices=["fadvise", "drop", "warm"],
        default="fadvise",
        help="how to make reads cold (default: posix_fadvise DONTNEED on the files read)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    ap.add_argument("--out", default=str(RESULTS), help=f"JSON output (default {RESULTS})")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    m = result["machine"]
    print(
        f"store I/O: {args.videos} videos x {args.frames} frames x ({args.tokens}, {args.width}) float16; "
        f"cache: {result['raw']['cache']}; {m.get('cpu_model')} "
        f"({m.get('cpus_usable', m['cpu_count'])} cpus), "
        f"{m.get('disk')}; load average at start {m.get('loadavg_1m_at_start', float('nan')):.1f}\n"
    )
    print("\n".join(table(result)))
    print(f"\n{result['note']}.\nJSON: {out} ({result['wall_s']:.0f} s)")
    return 0 if all(r["pass"] for r in result["store"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
