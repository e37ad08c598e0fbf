"""Peak memory of dense extraction against video length: flat, because rows stream to the store.

    python -m benchmarks.dense_memory                       # 2,500 .. 20,000-frame videos, 64 px, 25 fps
    python -m benchmarks.dense_memory --lengths 1000 4000   # quicker

For each length: one synthetic video of that many frames, extracted densely (every frame) with the tiny
random backbone and 11 KiB of tensors per frame (embed + every block's tokens, q, k; fp16), in a fresh
process whose own peak RSS (VmHWM; ``ru_maxrss`` would include the parent's) is reported (decode workers
are other processes). Holding a whole video's features until its commit, as stage one did before rows
streamed to the part, would add frames x bytes per frame to that peak: the "held before" column. Rows now
wait in memory only until their shard is full, so the peak grows with the video until every array's open
shard is full (10 arrays x ``store.shard_mb``), then stays flat: smaller shards, lower plateau.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dense_memory.json"
TENSORS = "[embed.tokens,b0.tokens,b1.tokens,b2.tokens,b0.q,b0.k,b1.q,b1.k,b2.q,b2.k]"

CHILD = """
import json, sys, time
from stages.core.config import load_config
from stages.extract.config import ExtractConfig
from stages.extract.stage import run_extract
from store import FeatureStore
cfg = load_config(ExtractConfig, None, sys.argv[1:])
t0 = time.perf_counter()
stats = run_extract(cfg)
fs = FeatureStore(cfg.store.path)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]  # kB, this exec only
print(json.dumps({"peak_rss_mb": int(hwm) / 1024,
                  "frames": stats.frames, "seconds": time.perf_counter() - t0, "committed": stats.committed,
                  "bytes_per_frame": fs.spec.bytes_per_frame}))
"""


def make_video(folder: Path, frames: int) -> Path:
    """One ``longrange`` video of ``frames`` frames (64 px, 25 fps) and its one-line source list."""
    from stages.video.synth import generate

    generate(folder, task="longrange", videos=1, seed=7, size=64, frames=frames, fps=25.0)
    return folder / "labels.csv"


def measure(source: Path, store: Path, shard_mb: float) -> dict[str, Any]:
    args = [
        f"source={source}",
        f"store.path={store}",
        "backbone.name=test_openclip_vit",
        f"tensors={TENSORS}",
        "sampling.mode=dense",
        "run.progress=false",
        "run.decode_workers=1",
        "backbone.batch_frames=256",
        f"store.shard_mb={shard_mb}",
    ]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.dense_memory", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--lengths", type=int, nargs="+", default=[2500, 5000, 10000, 20000], help="frames per video"
    )
    ap.add_argument("--shard-mb", type=float, nargs="+", default=[64.0, 4.0], help="store.shard_mb values")
    ap.add_argument("--out", default=str(RESULTS), help="JSON results file")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dense_memory_") as tmp:
        for n in args.lengths:
            folder = Path(tmp) / f"v{n}"
            source = make_video(folder, n)
            for shard_mb in args.shard_mb:
                r = measure(source, folder / f"s{shard_mb}.zarr", shard_mb) | {
                    "length": n,
                    "shard_mb": shard_mb,
                }
                r["held_before_mb"] = n * r["bytes_per_frame"] / 2**20
                rows.append(r)
                print(
                    f"{n:>6} frames, shards of {shard_mb:g} MB: peak RSS {r['peak_rss_mb']:.0f} MB (holding "
                    f"the video: +{r['held_before_mb']:.0f} MB), {r['frames'] / r['seconds']:.0f} frames/s",
                    flush=True,
                )
    lines = [
        "| frames in the video | store.shard_mb | main-process peak RSS (MB) | features a whole-video buffer "
        "would hold (MB) | frames/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['length']:,} | {r['shard_mb']:g} | {r['peak_rss_mb']:.0f} | {r['held_before_mb']:.0f} | "
        f"{r['frames'] / r['seconds']:.0f} |"
        for r in rows
    ]
    print("\n" + "\n".join(lines))
    result = {
        "rows": rows,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "tensors": TENSORS,
        "table": lines,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
