"""Run a bench: every task's data and store once, then every row for every seed, each job in its own
process (its wall time and peak memory are its own), then the table, the plot and the claims.

Layout under ``out``::

    <task>/data/            the task's videos and labels.csv (generated once)
    <task>/features.zarr    the task's store, extracted once with the bench's backbone (+ extract.json)
    <task>/<row>/s<seed>/   a row's run: checkpoints, metrics, bench.json (its measured result)
    results.json, results.md, bench.png

A bench that is stopped resumes: jobs whose ``bench.json`` holds the same config are not run again; a job
without one is started afresh (its partial outputs removed), so every figure is one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.bench.config import BenchConfig, RowSpec, TaskSpec
from stages.core.config import from_dict, merge
from stages.core.errors import ConfigError, TwostageError


@dataclass
class Measure:
    """One job's figures: wall seconds (imports excluded), peak resident memory, and the stage's result."""

    seconds: float
    peak_mb: float
    result: dict[str, Any]


def slug(label: str) -> str:
    """A folder name for a row label (``vivit_fe A 8->32`` -> ``vivit_fe_A_8-_32``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "row"


def task_source(task: TaskSpec, root: Path) -> Path:
    """The task's source list, generating its videos first when absent."""
    labels = root / "data" / "labels.csv"
    if labels.exists():
        return labels
    if task.kind == "arrow":
        from stages.video import arrow

        arrow.generate(root / "data", size=task.size, frames=task.frames or 16)
    else:
        from stages.video import synth

        synth.generate(root / "data", task=task.kind, videos=task.videos, seed=task.seed, size=task.size,
                       frames=task.frames, classes=task.classes, sprite=task.sprite)  # fmt: skip
    return labels


def extract_config(
    cfg: BenchConfig, task: TaskSpec, root: Path, store: Path, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    base = merge(merge(cfg.extract, task.extract), extra or {})
    return merge(base, {"source": str(root / "data" / "labels.csv"), "store": {"path": str(store)},
                        "run": {"progress": False}})  # fmt: skip


def train_config(
    cfg: BenchConfig, task: TaskSpec, row: RowSpec, store: Path, out: Path, seed: int, init: Path | None
) -> dict[str, Any]:
    over: dict[str, Any] = {"data": {"store": str(store)}, "head": {"name": row.head, "options": row.options},
                            "run": {"out": str(out), "seed": seed, "plots": False}}  # fmt: skip
    if init is not None:
        over["head"]["init_from"] = str(init)
    return merge(merge(merge(cfg.train, task.train), row.train), over)


def e2e_config(
    cfg: BenchConfig, task: TaskSpec, row: RowSpec, root: Path, out: Path, seed: int
) -> dict[str, Any]:
    over = {"data": {"source": str(root / "data" / "labels.csv")},
            "head": {"name": row.head, "options": row.options},
            "run": {"out": str(out), "seed": seed, "plots": False}}  # fmt: skip
    return merge(merge(merge(cfg.e2e, task.e2e), row.train), over)


def check(cfg: BenchConfig) -> None:
    """Build every job's config before any work, so that a typo fails in a second, not after an hour."""
    from stages.e2e.config import E2EConfig
    from stages.extract.config import ExtractConfig
    from stages.train.config import TrainConfig

    problems: list[str] = []
    out = Path(cfg.out)
    for task in cfg.tasks:
        root = out / task.name
        store = root / "features.zarr"
        jobs: list[tuple[type, dict[str, Any], str]] = [
            (ExtractConfig, extract_config(cfg, task, root, store), f"{task.name}: extract")
        ]
        for row in rows_of(cfg, task):
            where = f"{task.name} / row {row.label!r}"
            run = root / slug(row.label) / "s0"
            if row.method == "e2e":
                jobs.append((E2EConfig, e2e_config(cfg, task, row, root, run, 0), where))
            else:
                if row.extract:
                    config = extract_config(cfg, task, root, store, row.extract)
                    jobs.append((ExtractConfig, config, f"{where}: extract"))
                init = run / "last.pt" if row.init_from else None
                jobs.append((TrainConfig, train_config(cfg, task, row, store, run, 0, init), where))
        for schema, config, where in jobs:
            try:
                from_dict(schema, config, source=where)
            except ConfigError as e:
                problems += e.problems
    if problems:
        raise ConfigError(problems)


def rows_of(cfg: BenchConfig, task: TaskSpec) -> list[RowSpec]:
    return [r for r in cfg.rows if not r.tasks or task.name in r.tasks]


def run_job(kind: str, config: dict[str, Any], folder: Path, *, verbose: bool = False) -> Measure:
    """Run one job in a child process; its ``bench.json`` caches the measure for an identical config."""
    record = folder / "bench.json"
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("config") == config:
            return Measure(saved["seconds"], saved["peak_mb"], saved["result"])
    # An interrupted earlier attempt: measure a whole run, not a resumed tail.
    if kind == "extract":
        shutil.rmtree(config["store"]["path"], ignore_errors=True)
    elif folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        cfg_file, res_file = Path(tmp) / "config.json", Path(tmp) / "result.json"
        cfg_file.write_text(json.dumps(config))
        log = folder / f"{kind}.log"
        with open(log, "w") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stages.bench.child", kind, str(cfg_file), str(res_file)],
                stdout=None if verbose else sink, stderr=subprocess.STDOUT if not verbose else None,
            )  # fmt: skip
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not res_file.exists():
            tail = "" if verbose else "".join(log.read_text().splitlines(keepends=True)[-15:])
            raise TwostageError(
                f"bench job {kind} in {folder} failed (exit {proc.returncode}); log {log}:\n{tail}"
            )
        done = json.loads(res_file.read_text())
    measure = Measure(done["seconds"], usage.ru_maxrss / 1024, done["result"])  # ru_maxrss: KiB on Linux
    record.write_text(json.dumps({"config": config, "seconds": measure.seconds, "peak_mb": measure.peak_mb,
                                  "result": measure.result}, default=str, indent=1))  # fmt: skip
    return measure


def accuracy(result: dict[str, Any]) -> float | None:
    """The held-out top-1 at the end of training (the last evaluation, not the best: no selection on it)."""
    top1 = result.get("top1")
    return None if top1 is None else float(top1)


def run_bench(cfg: BenchConfig, *, verbose: bool = False, say: Any = print) -> list[dict[str, Any]]:
    """Every job of the bench; one record per (task, row, seed) with accuracy and cost."""
    check(cfg)
    out = Path(cfg.out)
    records: list[dict[str, Any]] = []
    for task in cfg.tasks:
        root = out / task.name
        task_source(task, root)
        store = root / "features.zarr"
        ex = run_job("extract", extract_config(cfg, task, root, store), root / "extract", verbose=verbose)
        say(f"[{task.name}] stage one: {ex.seconds:.1f} s, peak {ex.peak_mb:.0f} MB")
        for seed in cfg.seeds:
            done: dict[str, dict[str, Any]] = {}
            for row in rows_of(cfg, task):
                run = root / slug(row.label) / f"s{seed}"
                rec = _run_row(cfg, task, row, root, run, seed, ex, done, verbose)
                done[row.label] = rec
                records.append(rec)
                acc = rec["top1"]
                top1 = "n/a" if acc is None else f"{100 * acc:.1f}%"
                say(f"[{task.name}] {row.label} (seed {seed}): top-1 {top1}, cost {rec['cost_s']:.1f} s "
                    f"(extract {rec['extract_s']:.1f} + train {rec['train_s']:.1f}), "
                    f"peak {rec['peak_mb']:.0f} MB")  # fmt: skip
    return records


def _bytes_per_frame(store: Path) -> int | None:
    from store import FeatureStore

    try:
        return int(FeatureStore(store).spec.bytes_per_frame)
    except TwostageError:
        return None


def _run_row(
    cfg: BenchConfig, task: TaskSpec, row: RowSpec, root: Path, run: Path, seed: int, ex: Measure,
    done: dict[str, dict[str, Any]], verbose: bool,
) -> dict[str, Any]:  # fmt: skip
    """One row on one task and seed; its cost includes what it was built from (extraction, earlier rows)."""
    extract_s, train_s, peak = 0.0, 0.0, 0.0
    if row.method == "e2e":
        m = run_job("e2e", e2e_config(cfg, task, row, root, run, seed), run, verbose=verbose)
    else:
        store, extract_s, peak = root / "features.zarr", ex.seconds, ex.peak_mb
        if row.extract and not row.backbone_from:  # a store of the row's own, shared by its seeds
            store = run.parent / "features.zarr"
            config = extract_config(cfg, task, root, store, row.extract)
            own = run_job("extract", config, run.parent / "extract", verbose=verbose)
            extract_s, peak = own.seconds, own.peak_mb
        if row.backbone_from:  # the e2e row's fine-tuned backbone extracts a store of its own
            parent = done[row.backbone_from]
            store = run.parent / f"features_s{seed}.zarr"
            weights = Path(parent["out"]) / "last.pt"
            config = extract_config(
                cfg, task, root, store, merge(row.extract, {"backbone.weights_file": str(weights)})
            )
            own = run_job("extract", config, run.parent / f"extract_s{seed}", verbose=verbose)
            extract_s, peak = own.seconds, own.peak_mb
            train_s += parent["train_s"]
        init = None
        if row.init_from:
            parent = done[row.init_from]
            init = Path(parent["out"]) / "last.pt"
            train_s += parent["train_s"]
            extract_s = max(extract_s, parent["extract_s"])  # the same store (or a parent's) was paid once
            peak = max(peak, parent["peak_mb"])
        m = run_job("train", train_config(cfg, task, row, store, run, seed, init), run, verbose=verbose)
    train_s += m.seconds
    stored = None if row.method == "e2e" else _bytes_per_frame(store)
    return {"task": task.name, "row": row.label, "seed": seed, "top1": accuracy(m.result),
            "extract_s": extract_s, "train_s": train_s, "cost_s": extract_s + train_s,
            "peak_mb": max(peak, m.peak_mb), "out": str(run), "own_s": m.seconds,
            "bytes_per_frame": stored}  # fmt: skip
