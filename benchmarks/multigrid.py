"""Multigrid against the baseline, end to end: wall time and held-out accuracy to the end of training, where
the time goes (decoding clips or computing on them), and what an e2e epoch costs against a stage-two epoch
on features cached once.

    python -m benchmarks.multigrid                                   # CPU: tiny ViT, synthetic tasks
    python -m benchmarks.multigrid --tasks appearance --backbone timm:vit_tiny_patch16_224 --crop 64 \
        --size 96 --epochs 12 --no-stage-two --out benchmarks/results/multigrid_vit_tiny.json  # compute-bound
    python -m benchmarks.multigrid --tasks --slowfast ~/src/SlowFast   # only: the schedule against SlowFast
    python -m benchmarks.multigrid --backbone openclip_vit_b16.openai --crop 224 --size 256 --device cuda \
        --videos 512 --batch 32 --workers 8 --epochs 12 --backbone-lr 2e-5      # GPU (weights must be cached)

Per task, the same config is trained twice from the same seed: the baseline (multigrid off) for
``--epochs`` epochs, and multigrid (long + short cycle, SlowFast's factors, 1.5x epochs) over the same
LR stages. Each run's training time is split into data wait (decode + augment in the loader) and the rest
(forward, backward, optimizer step): the larger one binds. The schedule both runs use is printed first.
With ``--slowfast CHECKOUT`` the schedule is first compared, epoch by epoch, with SlowFast's own functions
over random configs (``slowfast_check``). Writes ``benchmarks/results/multigrid.json`` and prints markdown
tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from stages.core.config import from_dict, load_config
from stages.e2e import data as e2e_data
from stages.e2e.config import E2EConfig
from stages.e2e.multigrid import format_table
from stages.e2e.stage import make_plan, run_e2e
from stages.models import build_backbone
from stages.video.synth import generate


class Split:
    """Training time split into data wait and compute, summed over a run."""

    def __init__(self) -> None:
        self.load, self.compute, self.batches = 0.0, 0.0, 0

    def wrap(self, batches):
        def timed(data, epoch, start=0):
            t = time.perf_counter()
            for batch in batches(data, epoch, start):
                now = time.perf_counter()
                self.load += now - t
                self.batches += 1
                yield batch
                t = time.perf_counter()
                self.compute += t - now

        return timed


def e2e_config(args: argparse.Namespace, source: Path, out: Path, multigrid: bool) -> E2EConfig:
    steps = [0, round(args.epochs * 0.5), round(args.epochs * 0.8)]  # two LR stages, then the final phase
    return from_dict(E2EConfig, {
        "data": {"source": str(source), "val_fraction": 0.25, "frames": args.frames, "stride": args.stride,
                 "crop": args.crop, "batch_size": args.batch, "workers": args.workers},
        "augment": {"scale": [0.5, 1.0], "flip": 0.0},
        "backbone": {"name": args.backbone, "trainable": "all", "random_init": True},
        "head": {"name": "vivit_fe", "options": {"depth": 1, "input_norm": True}},
        "optim": {"lr": args.lr, "backbone_lr": args.backbone_lr, "schedule": "cosine", "steps": steps,
                  "epochs": args.epochs, "warmup_epochs": 1.0},
        "multigrid": {"long_cycle": multigrid, "short_cycle": multigrid, "scale_lr": args.scale_lr},
        "run": {"out": str(out), "plots": False, "log_every": 10**6, "eval_every": 10**6,
                "device": args.device, "resume": False},
    })  # fmt: skip


def timed_run(cfg: E2EConfig) -> dict[str, Any]:
    split, batches = Split(), e2e_data.ScheduledBatches.batches
    e2e_data.ScheduledBatches.batches = split.wrap(batches)
    try:
        t0 = time.perf_counter()
        result = run_e2e(cfg)
        wall = time.perf_counter() - t0
    finally:
        e2e_data.ScheduledBatches.batches = batches
    records = [json.loads(x) for x in (Path(cfg.run.out) / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("type") == "epoch"]
    return {
        "wall_s": round(wall, 1),
        "train_s": round(sum(r["seconds"] for r in epochs), 1),
        "eval_s": round(sum(r.get("eval_seconds", 0) for r in records if r.get("type") == "eval"), 1),
        "data_wait_s": round(split.load, 1),
        "compute_s": round(split.compute, 1),
        "binds": "decode" if split.load > split.compute else "compute",
        "epochs": len(epochs),
        "iterations": split.batches,
        "clips": sum(r["train_clips"] for r in epochs),
        "s_per_epoch": round(sum(r["seconds"] for r in epochs) / len(epochs), 2),
        "top1": result["top1"],
        "val_loss": round(result["val_loss"], 4),
    }


def stage_two_epoch(args: argparse.Namespace, source: Path, work: Path) -> dict[str, Any]:
    """Stage one once (the same backbone's per-frame CLS of every video), then seconds per stage-two epoch
    of the same head on the cached features."""
    from stages.extract.config import ExtractConfig
    from stages.extract.stage import run_extract
    from stages.train.config import TrainConfig
    from stages.train.stage import run_train

    store = work / "features.zarr"
    extract = load_config(ExtractConfig, None, [
        f"source={source}", f"store.path={store}", f"backbone.name={args.backbone}",
        "backbone.random_init=true", "tensors=[final.cls]",
        f"sampling.frames={args.frames}", f"sampling.stride={args.stride}", "sampling.split=train",
        "sampling.temporal_views=2", f"backbone.device={args.device}", "run.progress=false",
        "run.decode_workers=1"])  # fmt: skip
    t0 = time.perf_counter()
    run_extract(extract)
    extract_s = time.perf_counter() - t0
    train = load_config(TrainConfig, None, [
        f"data.store={store}", f"data.frames={args.frames}", f"data.batch_size={args.batch}",
        "data.workers=0", "data.val_fraction=0.25", "head.name=vivit_fe",
        'head.options={"depth": 1, "input_norm": true}', "optim.epochs=3", f"run.out={work / 'stage2'}",
        "run.plots=false", "run.resume=false", f"run.device={args.device}",
        "run.log_every=1000000"])  # fmt: skip
    run_train(train)
    records = [json.loads(x) for x in (work / "stage2" / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records if r.get("type") == "epoch"]
    return {"extract_once_s": round(extract_s, 1), "s_per_epoch": round(sum(seconds) / len(seconds), 3)}


def run_task(args: argparse.Namespace, task: str, work: Path) -> dict[str, Any]:
    data = work / task
    generate(data, task=task, videos=args.videos, seed=0, size=args.size, frames=args.video_frames, fps=8.0)
    source = data / "labels.csv"
    out: dict[str, Any] = {}
    for name, multigrid in (("baseline", False), ("multigrid", True)):
        cfg = e2e_config(args, source, work / f"{task}_{name}", multigrid)
        out[name] = timed_run(cfg)
        print(f"{task} {name}: {out[name]}", flush=True)
    b, m = out["baseline"], out["multigrid"]
    out["speedup_wall"] = round(b["wall_s"] / m["wall_s"], 2)
    out["speedup_compute"] = round(b["compute_s"] / m["compute_s"], 2)
    out["top1_change_points"] = round(100 * (m["top1"] - b["top1"]), 1)
    if args.stage_two:
        out["stage_two"] = stage_two_epoch(args, source, work / f"{task}_stage2")
        out["e2e_over_stage_two_per_epoch"] = round(b["s_per_epoch"] / out["stage_two"]["s_per_epoch"], 1)
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["| task | run | epochs | iterations | wall s | train s | data wait s | compute s | binds "
             "| top-1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, r in results["tasks"].items():
        for name in ("baseline", "multigrid"):
            x = r[name]
            lines.append(f"| {task} | {name} | {x['epochs']} | {x['iterations']} | {x['wall_s']} | "
                         f"{x['train_s']} | {x['data_wait_s']} | {x['compute_s']} | {x['binds']} | "
                         f"{x['top1']:.3f} |")  # fmt: skip
    lines += ["", "| task | wall-time speed-up | compute speed-up | top-1 change (points) | target met "
              "(>= 2.5x, >= -1 point) |", "|---|---|---|---|---|"]  # fmt: skip
    for task, r in results["tasks"].items():
        met = r["speedup_wall"] >= 2.5 and r["top1_change_points"] >= -1.0
        lines.append(f"| {task} | {r['speedup_wall']}x | {r['speedup_compute']}x | "
                     f"{r['top1_change_points']:+} | {'yes' if met else 'no'} |")  # fmt: skip
    lines += ["", "| task | e2e s/epoch (baseline) | stage-two s/epoch | ratio | stage one once, s |",
              "|---|---|---|---|---|"]  # fmt: skip
    for task, r in results["tasks"].items():
        if "stage_two" not in r:
            continue
        s2 = r["stage_two"]
        lines.append(f"| {task} | {r['baseline']['s_per_epoch']} | {s2['s_per_epoch']} | "
                     f"{r['e2e_over_stage_two_per_epoch']}x | {s2['extract_once_s']} |")  # fmt: skip
    return "\n".join(lines)


def _slowfast_modules(root: Path) -> tuple[Any, Any, Any, Any]:
    """SlowFast's own ``multigrid``, ``lr_policy`` and ``multigrid_helper`` from a checkout at ``root``
    (its logging stubbed), plus ``multigrid`` with its long-cycle-only IndexError fixed in memory (the
    final phase takes the last shape of the list, as ours does)."""
    import importlib.util
    import logging
    import sys
    import types

    stub = types.ModuleType("slowfast.utils.logging")
    stub.get_logger = logging.getLogger  # type: ignore[attr-defined]
    for name in ("slowfast", "slowfast.utils"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["slowfast.utils.logging"] = stub

    def load(name: str, rel: str, fix: bool = False) -> Any:
        source = (root / rel).read_text()
        module = types.ModuleType(name)
        if fix:
            source = source.replace("all_shapes[-1][2]", "all_shapes[-1][-1]")
        exec(compile(source, str(root / rel), "exec"), module.__dict__)  # noqa: S102 - the user's checkout
        return module

    spec = importlib.util.spec_from_file_location("sf_helper", root / "slowfast/datasets/multigrid_helper.py")
    helper = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(helper)  # type: ignore[union-attr]
    mg = "slowfast/utils/multigrid.py"
    lr = load("sf_lr", "slowfast/utils/lr_policy.py")
    return load("sf_mg", mg), load("sf_mg_fixed", mg, fix=True), lr, helper


def slowfast_check(root: Path, trials: int, seed: int = 0) -> dict[str, Any]:
    """Our plan against SlowFast's own functions for ``trials`` random configs (policies, steps, warmup,
    factors, long/short switches): per epoch the long-cycle shape (``get_current_long_cycle_shape``), the
    short cycle (``ShortCycleBatchSampler.batch_sizes``; crops as its Kinetics dataset rounds them) and the
    LR at 7 points of the epoch (``get_lr_at_epoch`` after ``init_multigrid``). SlowFast has no LR factors
    beside ``GAMMA``, so ``optim.lr_factors`` are powers of it; its cosine ignores the batch scaling, so
    ours runs with ``scale_lr=False`` there."""
    import math
    import random
    from types import SimpleNamespace as NS

    from torch.utils.data import SequentialSampler

    from stages.e2e.multigrid import Baseline, Multigrid, make_plan

    sf_mg, sf_fixed, sf_lr, helper = _slowfast_modules(root)
    rng, r2 = random.Random(seed), 0.5**0.5
    out = {
        "compared": 0,
        "mismatch_count": 0,
        "mismatches": [],
        "slowfast_index_error": 0,
        "refused_by_ours": 0,
    }
    for _ in range(trials):
        T, S = rng.choice([4, 8, 16, 32, 64]), rng.choice([32, 112, 160, 224, 320])
        B = rng.choice([1, 8, 64])
        E, gamma, policy = rng.randint(3, 300), rng.choice([0.1, 0.5]), rng.choice(["steps", "cosine"])
        steps = (0, *sorted(rng.sample(range(1, E), min(rng.randint(1, 4), E - 1))))
        base = Baseline(frames=T, crop=S, batch=B, epochs=E, lr=rng.choice([0.1, 1e-3]), policy=policy,
                        steps=steps, lr_factors=tuple(gamma**i for i in range(len(steps))),
                        warmup_epochs=rng.choice([0.0, 0.5, min(34.0, E / 3)]),
                        warmup_start_lr=rng.choice([0.0, 1e-4]))  # fmt: skip
        lf = rng.choice([[(0.25, r2), (0.5, r2), (0.5, 1), (1, 1)], [(0.5, 0.5), (1, 1)],
                         [(0.25, 0.5), (1, 1)]])  # fmt: skip
        sf, ef = rng.choice([(0.5, r2), (0.4, 0.6)]), rng.choice([1.5, 1.0, 2.0])
        long, short = rng.choice([(True, True), (True, False), (False, True)])
        cfg = NS(TRAIN=NS(BATCH_SIZE=B), DATA=NS(NUM_FRAMES=T, TRAIN_CROP_SIZE=S), NUM_GPUS=1,
                 MULTIGRID=NS(LONG_CYCLE=long, SHORT_CYCLE=short, LONG_CYCLE_FACTORS=[list(f) for f in lf],
                              SHORT_CYCLE_FACTORS=list(sf), EPOCH_FACTOR=ef, DEFAULT_S=S),
                 SOLVER=NS(STEPS=list(steps), GAMMA=gamma, LRS=list(base.lr_factors), MAX_EPOCH=E,
                           BASE_LR=base.lr,
                           LR_POLICY="cosine" if policy == "cosine" else "steps_with_relative_lrs",
                           WARMUP_EPOCHS=base.warmup_epochs, WARMUP_START_LR=base.warmup_start_lr,
                           COSINE_END_LR=0.0, COSINE_AFTER_WARMUP=False))  # fmt: skip
        schedule = sf_mg.MultigridSchedule()
        try:
            schedule.init_multigrid(cfg)
        except IndexError:  # long cycle without short cycle: SlowFast's crash; compare with it fixed
            out["slowfast_index_error"] += 1
            cfg.SOLVER.STEPS, cfg.SOLVER.LRS, cfg.SOLVER.MAX_EPOCH = list(steps), list(base.lr_factors), E
            schedule = sf_fixed.MultigridSchedule()
            schedule.init_multigrid(cfg)
        mg = Multigrid(long_cycle=long, short_cycle=short, long_factors=tuple(map(tuple, lf)),
                       short_factors=sf, epoch_factor=ef, scale_lr=policy == "steps")  # fmt: skip
        try:
            plan = make_plan(base, mg)
        except ValueError:  # a zero batch factor (short crop above the long-cycle crop): SlowFast degenerates
            out["refused_by_ours"] += 1
            continue
        out["compared"] += 1
        theirs = []
        for e in range(cfg.SOLVER.MAX_EPOCH):
            bf, t, crop = sf_mg.get_current_long_cycle_shape(schedule.schedule, e) if long else (1, T, S)
            cycle = [(B * bf, crop)]
            if short:
                cfg.DATA.TRAIN_CROP_SIZE = crop
                sampler = helper.ShortCycleBatchSampler(SequentialSampler(range(1)), B * bf, False, cfg)
                sizes = sampler.batch_sizes
                cycle = [(sizes[i], int(round(f * S))) for i, f in enumerate(sf)] + [(sizes[2], crop)]
            lrs = [sf_lr.get_lr_at_epoch(cfg, e + k / 7) for k in range(7)]
            theirs.append((B * bf, t, crop, tuple(cycle), lrs))
        ours = [(e.batch, e.frames, e.crop, e.short_cycle, [plan.lr(e.epoch + k / 7) for k in range(7)])
                for e in plan.epochs]  # fmt: skip
        same = len(ours) == len(theirs) and all(
            a[:4] == b[:4]
            and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-15) for x, y in zip(a[4], b[4], strict=True))
            for a, b in zip(ours, theirs, strict=True)
        )
        out["mismatch_count"] += not same
        if not same and len(out["mismatches"]) < 5:  # the first few, to reproduce
            out["mismatches"].append({"baseline": base.__dict__, "multigrid": mg.__dict__})
    return out


def machine() -> dict[str, Any]:
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0)
            if torch.cuda.is_available() else None, "loadavg": load}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multigrid", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="*", default=["appearance", "direction"])  # none: only --slowfast
    p.add_argument("--backbone", default="test_openclip_vit")  # tiny random-init ViT, 32 px, patch 8
    p.add_argument("--device", default="cpu")
    p.add_argument("--videos", type=int, default=96)  # 72 train, 24 held out
    p.add_argument("--size", type=int, default=64)  # video frame size (px); crops are resized to --crop
    p.add_argument("--video-frames", type=int, default=24)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)  # global, at the full shape
    p.add_argument("--epochs", type=int, default=20)  # the baseline's; multigrid trains 1.5x
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--backbone-lr", type=float, default=1e-3)  # random init: learns from scratch
    p.add_argument("--scale-lr", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--workers", type=int, default=0)  # 2 cores: decode in the training process
    p.add_argument("--threads", type=int, default=1)  # shared 2 cores: 2 threads spin-wait, 10x slower
    p.add_argument("--stage-two", action=argparse.BooleanOptionalAction, default=True)  # e2e vs cached epoch
    p.add_argument("--slowfast", default=None, help="SlowFast checkout: compare the schedule with its code")
    p.add_argument("--slowfast-trials", type=int, default=1000)
    p.add_argument("--dir", default=None)
    p.add_argument("--out", default="benchmarks/results/multigrid.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.dir or tempfile.mkdtemp(prefix="multigrid_"))
    probe = e2e_config(args, work / "labels.csv", work / "probe", True)
    patch = int(build_backbone(args.backbone, random_init=True).spec["patch_size"])
    print(format_table(make_plan(probe, patch)), flush=True)  # crops in whole patches, as the runs
    results: dict[str, Any] = {"machine": machine(), "args": vars(args), "tasks": {}}
    if args.slowfast:
        results["slowfast_schedule"] = slowfast_check(Path(args.slowfast), args.slowfast_trials)
        print(f"schedule against SlowFast's own code: {results['slowfast_schedule']}", flush=True)
    for task in args.tasks:
        results["tasks"][task] = run_task(args, task, work)
    results["machine"]["loadavg_end"] = machine()["loadavg"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
