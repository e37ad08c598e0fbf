"""Typed config of ``twostage bench`` (``configs/bench/*.yaml``).

A bench is a list of **tasks** (data sets, each extracted once with the bench's backbone) and a list of
**rows** (a method: a head trained from the task's store, or the end-to-end path on its videos), run for
every seed; ``claims`` names the rows that test each method's published claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TaskKind = Literal["appearance", "direction", "longrange", "arrow"]


@dataclass
class TaskSpec:
    name: str = ""  # column label and folder name under `out`
    kind: TaskKind = "direction"  # a synthetic task, or `arrow`: real clips played forward or backward
    videos: int = 96  # synthetic tasks: videos generated (arrow: every window of the shipped clips)
    frames: int | None = None  # frames per video; None = the task's default (arrow: 16)
    size: int = 64  # frame side in pixels (the pretrained tiny backbone's input size)
    sprite: float = 0.4  # synthetic tasks: sprite side / frame side
    classes: int | None = None  # synthetic tasks: None = the task's default
    seed: int = 0  # data seed (training seeds are the bench's `seeds`)
    extract: dict[str, Any] = field(default_factory=dict)  # stage-one keys for this task only
    train: dict[str, Any] = field(default_factory=dict)  # stage-two keys for this task only
    e2e: dict[str, Any] = field(default_factory=dict)  # end-to-end keys for this task only

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name is required (the column label, e.g. 'direction')")
        if self.videos < 8 or self.size < 16:
            raise ValueError(f"videos={self.videos}, size={self.size}: expected >= 8 videos and >= 16 px")


@dataclass
class RowSpec:
    label: str = ""  # the table's row label, unique
    method: Literal["train", "e2e"] = "train"  # a head from the task's store, or backbone + head end to end
    head: str = "linear"  # a registered head (`twostage --list-heads`)
    options: dict[str, Any] = field(default_factory=dict)  # head.options
    train: dict[str, Any] = field(default_factory=dict)  # keys of this row's stage-two or e2e config
    init_from: str | None = None  # a row (same task and seed) whose checkpoint initialises this head
    backbone_from: str | None = None  # an e2e row whose fine-tuned backbone extracts this row's store
    extract: dict[str, Any] = field(default_factory=dict)  # stage-one keys of a store of this row's own
    # (e.g. store.dtype=int8): extracted once per task, its seconds are the row's extraction cost
    tasks: list[str] = field(default_factory=list)  # tasks this row runs on; empty = all

    def __post_init__(self) -> None:
        if not self.label:
            raise ValueError("label is required (the row's name in the table)")
        if self.method == "e2e" and (self.init_from or self.backbone_from or self.extract):
            raise ValueError(
                f"row {self.label!r}: init_from, backbone_from, extract are for method: train rows"
            )


@dataclass
class ClaimsSpec:
    """Row labels that test each claim; a claim whose rows are missing from the bench is left out."""

    gowda_frozen: list[str] = field(default_factory=list)  # frozen spatial + adapter + temporal init rows
    gowda_e2e: str | None = None  # ... against this end-to-end row (accuracy at <= 50% of its cost)
    evl_full: str | None = None  # EVL with every temporal module
    evl_off: list[str] = field(default_factory=list)  # EVL with one temporal module off each
    evl_temporal_task: str = "direction"  # where the modules must matter
    evl_static_task: str = "appearance"  # where they must not
    memory: str | None = None  # the memory head ...
    memory_base: str | None = None  # ... against the same head with M = 0
    memory_task: str = "longrange"
    multigrid: str | None = None  # end to end with multigrid ...
    multigrid_base: str | None = None  # ... against the same run without
    int8: list[list[str]] = field(default_factory=list)  # [float16 row, int8 row] pairs: within 0.5 points


@dataclass
class BenchConfig:
    out: str = "runs/bench"  # data, stores, checkpoints, the table, the plot and results.json
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # training seeds; mean +- std over them
    extract: dict[str, Any] = field(default_factory=dict)  # stage-one config shared by every task
    train: dict[str, Any] = field(default_factory=dict)  # stage-two config shared by every train row
    e2e: dict[str, Any] = field(default_factory=dict)  # e2e config shared by every e2e row
    tasks: list[TaskSpec] = field(default_factory=list)
    rows: list[RowSpec] = field(default_factory=list)
    claims: ClaimsSpec = field(default_factory=ClaimsSpec)

    def __post_init__(self) -> None:
        if not self.tasks or not self.rows or not self.seeds:
            raise ValueError("tasks, rows and seeds must each list at least one entry")
        labels = [r.label for r in self.rows]
        if len(set(labels)) != len(labels):
            repeated = sorted({x for x in labels if labels.count(x) > 1})
            raise ValueError(f"row labels must be unique; repeated: {repeated}")
        names = {t.name for t in self.tasks}
        if len(names) != len(self.tasks):
            raise ValueError("task names must be unique")
        seen: set[str] = set()
        for r in self.rows:
            for dep in (r.init_from, r.backbone_from):
                if dep is not None and dep not in seen:
                    raise ValueError(f"row {r.label!r} depends on {dep!r}, which must be an earlier row")
            for dep in filter(None, (r.init_from, r.backbone_from)):
                dep_tasks = set(next(x for x in self.rows if x.label == dep).tasks or names)
                if not set(r.tasks or names) <= dep_tasks:
                    raise ValueError(f"row {r.label!r} runs on tasks its dependency {dep!r} does not")
            if r.backbone_from and next(x for x in self.rows if x.label == r.backbone_from).method != "e2e":
                raise ValueError(f"row {r.label!r}: backbone_from={r.backbone_from!r} is not an e2e row")
            unknown = sorted(set(r.tasks) - names)
            if unknown:
                raise ValueError(f"row {r.label!r} names unknown tasks {unknown}; tasks are {sorted(names)}")
            seen.add(r.label)
