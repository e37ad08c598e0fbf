"""Stage one on dask: scaling from 1 to 2 local workers, and dask's per-task overhead.

    python benchmarks/cluster_scaling.py [--videos 16] [--frames 96] [--size 128] [--tasks 2000] [--repeat 3]

1. Decode-bound extraction: small synthetic videos, dense sampling (every frame decoded), the tiny
   random-init backbone and one stored tensor, so decoding dominates. Each dask worker runs one decode
   process. Timed from submitting the parts to the last commit, on warm workers (imports and the decode
   fork server started beforehand), best of ``--repeat`` runs; the cluster start is reported apart.
   A plain single-process run (``run_extract``) with 1 and 2 decode processes is the reference without
   dask. Splits of 4 parts and of 1 part per worker show what starting a part costs.
2. Per-task overhead: N trivial tasks through ``client.map`` + ``gather`` against a plain Python loop.

Writes ``benchmarks/results/cluster_scaling.json`` and prints a markdown table with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import cluster  # noqa: E402
from stages.core.config import load_config  # noqa: E402
from stages.extract.config import ExtractConfig  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "cluster_scaling.json"


def machine() -> dict:
    import dask
    import torch

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "")
    return {
        "cpu": cpu,
        "cores": cluster._cores(),
        "gpus": cluster._gpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dask": dask.__version__,
        "load_avg_1m_at_start": os.getloadavg()[0],
    }


def config(videos: Path, store: Path, **overrides: object) -> ExtractConfig:
    items = [
        f"source={videos / 'labels.csv'}",
        f"store.path={store}",
        "backbone.name=test_openclip_vit",
        "backbone.batch_frames=64",
        "tensors=[final.cls]",
        "sampling.mode=dense",
        "run.decode_workers=1",
        "run.progress=false",
    ] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(ExtractConfig, None, items)


def _warm() -> int:
    """Import stage one and start the decode fork server in this worker, so timings exclude both."""
    from stages.extract import runner

    ctx = runner._context()
    p = ctx.Process(target=time.sleep, args=(0,))
    p.start()
    p.join()
    return os.getpid()


def _noop(x: int) -> int:
    return x


def dask_run(videos: Path, work: Path, workers: int, parts: int, repeat: int) -> dict:
    """Best of ``repeat`` timed extractions (fresh stores) on one local cluster of warm workers."""
    base = config(videos, work / "unused.zarr", **{"cluster.kind": "local", "cluster.workers": workers})
    items, classes = _items(base)
    count, walls, frames = parts, [], 0
    t0 = time.perf_counter()
    with cluster.make_client(base.cluster) as (client, gpus):
        client.run(_warm)
        started = time.perf_counter() - t0
        for r in range(repeat):
            cfg = config(
                videos,
                work / f"dask{workers}-{count}-{r}.zarr",
                **{"cluster.kind": "local", "cluster.workers": workers},
            )
            committed = cluster.prepare_store(cfg, classes)
            t1 = time.perf_counter()
            plan = cluster.plan_parts(items, committed, count)
            futures = cluster.submit_parts(client, cfg, plan, count, gpus)
            cluster.watch(futures, cfg.store.path, len(items), (0, 0, 0), enabled=False)
            walls.append(time.perf_counter() - t1)
            results, errors = cluster.collect(futures)
            assert not errors, errors
            frames = sum(x["frames"] for x in results)
    return {
        "mode": f"dask LocalCluster, {workers} worker(s) x 1 decode process",
        "workers": workers,
        "parts": count,
        "frames": frames,
        "wall_s": round(min(walls), 2),
        "walls_s": [round(w, 2) for w in walls],
        "frames_per_s": round(frames / min(walls), 1),
        "cluster_start_s": round(started, 2),
    }


def plain_run(videos: Path, work: Path, decode_workers: int, repeat: int) -> dict:
    """Best of ``repeat`` single-process extractions (``run_extract``, no dask)."""
    from stages.extract.stage import run_extract

    run_extract(config(videos, work / f"warm{decode_workers}.zarr", **{"run.limit": 1}))  # fork server up
    runs = [
        run_extract(
            config(videos, work / f"plain{decode_workers}-{r}.zarr", **{"run.decode_workers": decode_workers})
        )
        for r in range(repeat)
    ]
    best = min(runs, key=lambda st: st.wall_s)
    return {
        "mode": f"plain process (no dask), {decode_workers} decode process(es)",
        "workers": 1,
        "parts": 1,
        "frames": best.frames,
        "wall_s": round(best.wall_s, 2),
        "walls_s": [round(st.wall_s, 2) for st in runs],
        "frames_per_s": round(best.frames / best.wall_s, 1),
        "cluster_start_s": None,
    }


def overhead(tasks: int) -> dict:
    from distributed import LocalCluster

    t = time.perf_counter()
    for i in range(tasks):
        _noop(i)
    loop_us = (time.perf_counter() - t) / tasks * 1e6
    import dask

    with (
        dask.config.set(cluster.NO_DAEMON),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc,
        lc.get_client() as client,
    ):
        client.gather(client.map(_noop, range(100), pure=False))  # warm: functions pickled, comms open
        t = time.perf_counter()
        client.gather(client.map(_noop, range(tasks), pure=False))
        dask_us = (time.perf_counter() - t) / tasks * 1e6
    return {
        "tasks": tasks,
        "plain_loop_us_per_task": round(loop_us, 3),
        "dask_us_per_task": round(dask_us, 1),
    }


def _items(cfg: ExtractConfig) -> tuple[list, list[str]]:
    from stages.video import sources

    return sources.read_source(cfg.source, classes=cfg.classes)


def table(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['gpus']} GPUs; Python {m['python']}, torch "
        f"{m['torch']}, dask {m['dask']}; 1-min load average at start {m['load_avg_1m_at_start']:.1f}",
        f"Workload: {result['workload']}",
        "",
        "| run | parts | frames | wall s (best) | frames/s | vs 1 dask worker, same parts/worker | "
        "cluster start s |",
        "|---|---|---|---|---|---|---|",
    ]
    dask1 = {
        r["parts"]: r["frames_per_s"]
        for r in result["scaling"]
        if r["mode"].startswith("dask") and r["workers"] == 1
    }
    for r in result["scaling"]:
        start = "-" if r["cluster_start_s"] is None else f"{r['cluster_start_s']:.1f}"
        ref = dask1.get(r["parts"] // r["workers"]) if r["mode"].startswith("dask") else None
        speedup = "-" if ref is None else f"{r['frames_per_s'] / ref:.2f}x"
        lines.append(
            f"| {r['mode']} | {r['parts']} | {r['frames']} | {r['wall_s']:.2f} | "
            f"{r['frames_per_s']:.1f} | {speedup} | {start} |"
        )
    o = result["overhead"]
    lines += [
        "",
        "| per-task cost | µs per task |",
        "|---|---|",
        f"| plain Python loop ({o['tasks']} calls) | {o['plain_loop_us_per_task']:.3f} |",
        f"| dask client.map + gather, 2 local workers ({o['tasks']} tasks) | {o['dask_us_per_task']:.1f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per setting; the best is reported")
    args = parser.parse_args()
    from stages.video.synth import generate

    info = machine()
    with tempfile.TemporaryDirectory(prefix="cluster_scaling_") as tmp:
        work = Path(tmp)
        generate(
            work / "videos", task="direction", videos=args.videos, seed=0, size=args.size, frames=args.frames
        )
        v, n = work / "videos", args.repeat
        scaling = [
            plain_run(v, work, 1, n),
            plain_run(v, work, 2, n),
            dask_run(v, work, 1, 4, n),
            dask_run(v, work, 2, 8, n),  # 4 parts per worker
            dask_run(v, work, 1, 1, n),
            dask_run(v, work, 2, 2, n),
        ]  # 1 part per worker
    result = {
        "machine": info | {"load_avg_1m_at_end": os.getloadavg()[0]},
        "workload": f"{args.videos} synthetic videos, {args.size}x{args.size} px, {args.frames} frames "
        "each, dense sampling (every frame), test_openclip_vit -> final.cls",
        "scaling": scaling,
        "overhead": overhead(args.tasks),
        "args": vars(args),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
