"""``twostage run CONFIG`` (also ``python -m pipeline run CONFIG``): both stages in sequence, then a table.

For each data set: generate it (synthetic data sets, skipped when present), extract its features (skipped
when the store already holds them), then train every listed head from the store; finally print one
results table (accuracy, seconds per epoch, bytes stored per frame) and write it as JSON and markdown.
Every generated extract and train config is validated before any work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stages.core.config import from_dict, load_config, merge, to_dict
from stages.core.errors import ConfigError, TwostageError

logger = logging.getLogger(__name__)


@dataclass
class SynthSpec:
    task: Literal["appearance", "direction", "longrange"] = "direction"
    videos: int = 48  # enough for a train/val split on 2 CPU cores
    seed: int = 0  # same seed, same videos and labels
    size: int = 64  # pixels per side
    frames: int | None = None  # None = the task's default (32; 64 for longrange)
    fps: float = 8.0
    classes: int | None = None  # None = the task's default
    sprite: float = 0.25  # sprite side / frame side; larger is easier for a weak (random-init) backbone


@dataclass
class DatasetSpec:
    name: str = ""  # row label in the results table, and the folder name under `out`
    synth: SynthSpec | None = None  # generate this synthetic data set first (skipped when labels.csv exists)
    source: str | None = None  # or an existing source list / folder / tar shards
    extract: dict[str, Any] = field(default_factory=dict)  # extract keys overriding the run-level `extract`
    train: dict[str, Any] = field(default_factory=dict)  # train keys overriding the run-level `train`

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name is required (a short label, e.g. 'direction')")
        if (self.synth is None) == (self.source is None):
            raise ValueError(f"data set {self.name!r}: give exactly one of `synth` or `source`")


@dataclass
class HeadRun:
    name: str = "linear"  # a registered head (`twostage --list-heads`)
    options: dict[str, Any] = field(default_factory=dict)  # builder options (head.options)
    train: dict[str, Any] = field(default_factory=dict)  # train keys for this head only (e.g. optim.lr)
    label: str | None = None  # table label; default the head name


@dataclass
class PipelineConfig:
    out: str = "runs/pipeline"  # data sets, stores, checkpoints and the results table go here
    extract: dict[str, Any] = field(default_factory=dict)  # stage-one config shared by all data sets
    train: dict[str, Any] = field(default_factory=dict)  # stage-two config shared by all heads
    datasets: list[DatasetSpec] = field(default_factory=list)
    heads: list[HeadRun] = field(default_factory=lambda: [HeadRun()])

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets is empty: list at least one (synth: {...} or source: ...)")


@dataclass
class Plan:
    dataset: DatasetSpec
    root: Path
    extract: Any  # ExtractConfig
    trains: list[tuple[str, Any]]  # (label, TrainConfig)


def plan(cfg: PipelineConfig) -> list[Plan]:
    """Every stage's config, built and validated up front; all problems raised at once."""
    from stages.extract.config import ExtractConfig
    from stages.train.config import TrainConfig

    plans, problems = [], []
    for ds in cfg.datasets:
        root = Path(cfg.out) / ds.name
        source = str(root / "data" / "labels.csv") if ds.synth else ds.source
        store = str(root / "features.zarr")
        ex = merge(merge(cfg.extract, ds.extract), {"source": source, "store": {"path": store}})
        extract = None
        try:
            extract = from_dict(ExtractConfig, ex, source=f"datasets[{ds.name}].extract")
        except ConfigError as e:
            problems += e.problems  # keep going: the heads' problems are reported in the same error
        trains = []
        for h in cfg.heads:
            label = h.label or h.name
            tr = merge(
                merge(merge(cfg.train, ds.train), h.train),
                {
                    "data": {"store": store},
                    "head": {"name": h.name, "options": h.options},
                    "run": {"out": str(root / "heads" / label)},
                },
            )
            try:
                trains.append((label, from_dict(TrainConfig, tr, source=f"heads[{label}] on {ds.name}")))
            except ConfigError as e:
                problems += e.problems
        plans.append(Plan(ds, root, extract, trains))
    if problems:
        raise ConfigError(problems)
    return plans


def store_is_current(extract: Any) -> bool:
    """True when the store is complete and was extracted with this feature config (skip stage one)."""
    from store import FeatureStore

    try:
        fs = FeatureStore(extract.store.path)
    except TwostageError:
        return False
    keys = ("source", "backbone", "tensors", "pool", "classes", "sampling")
    want, have = to_dict(extract), fs.spec.config
    return fs.complete and all(want.get(k) == have.get(k) for k in keys)


def run_dataset(p: Plan) -> list[dict[str, Any]]:
    from pipeline.report import print_summary
    from stages.extract.stage import run_extract, summary
    from stages.train.stage import run_train
    from store import FeatureStore

    if p.dataset.synth and not (p.root / "data" / "labels.csv").exists():
        from stages.video.synth import generate

        s = p.dataset.synth
        generate(
            p.root / "data",
            task=s.task,
            videos=s.videos,
            seed=s.seed,
            size=s.size,
            frames=s.frames,
            fps=s.fps,
            classes=s.classes,
            sprite=s.sprite,
        )
    if store_is_current(p.extract):
        logger.info("[%s] stage one: %s already holds these features; skipped", p.dataset.name,
                    p.extract.store.path)  # fmt: skip
    else:
        stats = run_extract(p.extract)
        print_summary(summary(stats), p.extract.store.path)
    bytes_per_frame = FeatureStore(p.extract.store.path).spec.bytes_per_frame
    rows = []
    for label, train in p.trains:
        t0 = time.perf_counter()
        metrics = run_train(train)
        rows.append(
            {
                "dataset": p.dataset.name,
                "head": label,
                "bytes_per_frame": bytes_per_frame,
                "train_s": round(time.perf_counter() - t0, 1),
                "top1": metrics.get("top1"),
                "top5": metrics.get("top5"),
                "mean_class_acc": metrics.get("mean_class_acc"),
                "s_per_epoch": seconds_per_epoch(Path(train.run.out) / "metrics.jsonl"),
            }
        )
    return rows


def seconds_per_epoch(metrics_file: Path) -> float | None:
    """Mean training seconds per epoch over the run's epoch records (evaluation excluded)."""
    if not metrics_file.exists():
        return None
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    seconds = [r["seconds"] for r in records if r.get("type") == "epoch" and "seconds" in r]
    return sum(seconds) / len(seconds) if seconds else None


def table(rows: list[dict[str, Any]]) -> str:
    head = "| data set | head | top-1 | top-5 | mean class acc | s/epoch | bytes/frame stored |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:

        def fmt(x: Any, pct: bool = True) -> str:
            return "-" if x is None else (f"{100 * x:.1f}%" if pct else f"{x:.2f}")

        lines.append(
            f"| {r['dataset']} | {r['head']} | {fmt(r['top1'])} | {fmt(r['top5'])} | "
            f"{fmt(r['mean_class_acc'])} | {fmt(r['s_per_epoch'], False)} | {r['bytes_per_frame']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="twostage run",
        description=__doc__.split("\n\n")[0],
        epilog="Example: twostage run configs/quickstart.yaml out=runs/qs2 "
        "(overrides use dotted keys of this file's schema).",
    )
    parser.add_argument("config", help="pipeline YAML (configs/quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--verbose", action="store_true", help="also the per-epoch and evaluation lines")
    args = parser.parse_args(argv)
    if not args.verbose:  # a progress bar per training (train.run.progress) tells enough
        logging.getLogger("stages.train.loop").setLevel(logging.WARNING)
    cfg = load_config(PipelineConfig, args.config, args.overrides)
    plans = plan(cfg)
    t0 = time.perf_counter()
    rows = [r for p in plans for r in run_dataset(p)]
    md = table(rows)
    print(f"\nresults ({time.perf_counter() - t0:.0f} s in all):\n{md}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(md + "\n")
    (out / "results.json").write_text(
        json.dumps({"rows": rows, "config": to_dict(cfg)}, indent=2, default=str)
    )
    return 0
