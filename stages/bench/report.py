"""The bench's outputs: mean +- std over seeds, the accuracy x cost table and plot, and each claim's
verdict."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.bench.config import ClaimsSpec


@dataclass
class Cell:
    """One row on one task, over seeds."""

    row: str
    task: str
    acc: float | None  # mean top-1 (0..1) over seeds
    acc_std: float | None  # sample std over seeds (0 with one seed)
    cost_s: float  # mean seconds: extraction (once) + training, including what the row was built from
    train_s: float  # mean seconds of training alone (own + parent rows)
    peak_mb: float  # max over seeds
    seeds: int
    bytes_per_frame: int | None = None  # stored feature bytes per frame (None: end to end, no store)


def summarise(records: list[dict[str, Any]]) -> list[Cell]:
    """One cell per (row, task), in the order rows first appear."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["row"], r["task"]), []).append(r)
    cells = []
    for (row, task), rs in groups.items():
        accs = [r["top1"] for r in rs if r["top1"] is not None]
        cells.append(
            Cell(
                row=row,
                task=task,
                acc=statistics.fmean(accs) if accs else None,
                acc_std=statistics.stdev(accs) if len(accs) > 1 else (0.0 if accs else None),
                cost_s=statistics.fmean(r["cost_s"] for r in rs),
                train_s=statistics.fmean(r["train_s"] for r in rs),
                peak_mb=max(r["peak_mb"] for r in rs),
                seeds=len(rs),
                bytes_per_frame=rs[0].get("bytes_per_frame"),
            )
        )
    return cells


def _pct(cell: Cell | None) -> str:
    if cell is None or cell.acc is None:
        return "-"
    return f"{100 * cell.acc:.1f} ± {100 * (cell.acc_std or 0.0):.1f}"


def table(cells: list[Cell]) -> str:
    """Accuracy per task (mean ± std over seeds, %) and the cost per task (seconds, peak MB)."""
    rows = list(dict.fromkeys(c.row for c in cells))
    tasks = list(dict.fromkeys(c.task for c in cells))
    at = {(c.row, c.task): c for c in cells}
    head = (
        "| method | "
        + " | ".join(f"{t} top-1 %" for t in tasks)
        + " | "
        + " | ".join(f"{t} cost s" for t in tasks)
        + " | peak MB | stored B/frame |"
    )
    lines = [head, "|---|" + "---:|" * (2 * len(tasks) + 2)]
    for row in rows:
        accs = [_pct(at.get((row, t))) for t in tasks]
        costs = [f"{at[(row, t)].cost_s:.0f}" if (row, t) in at else "-" for t in tasks]
        peak = max(c.peak_mb for c in cells if c.row == row)
        stored = next((c.bytes_per_frame for c in cells if c.row == row and c.bytes_per_frame), None)
        per_frame = "-" if stored is None else f"{stored:,}"
        lines.append(
            f"| {row} | " + " | ".join(accs) + " | " + " | ".join(costs) + f" | {peak:.0f} | {per_frame} |"
        )
    return "\n".join(lines)


def plot(cells: list[Cell], path: Path) -> None:
    """Accuracy against cost (log seconds), one panel per task, every point labelled with its row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(c.task for c in cells))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for c in (c for c in cells if c.task == task and c.acc is not None):
            ax.errorbar(c.cost_s, 100 * c.acc, yerr=100 * (c.acc_std or 0), fmt="o", ms=4, capsize=2)
            ax.annotate(c.row, (c.cost_s, 100 * c.acc), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("cost: extraction + training (s)")
        ax.set_ylabel("held-out top-1 (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class Verdict:
    claim: str
    reproduced: bool | None  # None: the bench lacks the rows to test it
    evidence: str


def claims(cells: list[Cell], spec: ClaimsSpec) -> list[Verdict]:
    """Each claim tested on the cells, with the numbers that decide it."""
    at = {(c.row, c.task): c for c in cells}
    tasks = list(dict.fromkeys(c.task for c in cells))
    out = [_gowda(at, tasks, spec), _evl(at, spec), _memory(at, spec), _multigrid(at, tasks, spec)]
    return out + ([_int8(at, tasks, spec)] if spec.int8 else [])


def _gap(a: Cell, b: Cell) -> float:
    """Points by which ``a`` beats ``b`` (mean top-1)."""
    return 100 * ((a.acc or 0.0) - (b.acc or 0.0))


def _noise(*cells: Cell) -> float:
    """Points of seed noise: two standard errors of the difference of the means."""
    var = sum((100 * (c.acc_std or 0.0)) ** 2 / max(c.seeds, 1) for c in cells)
    return 2 * var**0.5


def _gowda(at: dict, tasks: list[str], spec: ClaimsSpec) -> Verdict:
    claim = (
        "frozen spatial + adapter + temporal init reaches end-to-end accuracy at <= 50% of its cost "
        "(Gowda et al.)"
    )
    if not spec.gowda_e2e or not spec.gowda_frozen:
        return Verdict(claim, None, "no rows named for it (claims.gowda_frozen, claims.gowda_e2e)")
    parts, wins = [], []
    for t in tasks:
        e2e = at.get((spec.gowda_e2e, t))
        frozen = [at[(r, t)] for r in spec.gowda_frozen if (r, t) in at and at[(r, t)].acc is not None]
        if e2e is None or e2e.acc is None or not frozen:
            continue
        # the cheapest frozen row that reaches e2e accuracy (within noise), else the most accurate one
        reach = [c for c in frozen if _gap(c, e2e) >= -max(1.0, _noise(c, e2e))]
        best = min(reach, key=lambda c: c.cost_s) if reach else max(frozen, key=lambda c: c.acc or 0.0)
        ratio = best.cost_s / e2e.cost_s
        ok = bool(reach) and ratio <= 0.5
        wins.append(ok)
        parts.append(f"{t}: {best.row} {_pct(best)}% at {ratio:.0%} of the cost of {e2e.row} {_pct(e2e)}%")
    if not wins:
        return Verdict(claim, None, "the named rows did not run on a common task")
    return Verdict(claim, all(wins), "; ".join(parts))


def _evl(at: dict, spec: ClaimsSpec) -> Verdict:
    claim = f"EVL's temporal modules matter on {spec.evl_temporal_task} and not on {spec.evl_static_task}"
    if not spec.evl_full or not spec.evl_off:
        return Verdict(claim, None, "no rows named for it (claims.evl_full, claims.evl_off)")
    drops: dict[str, list[tuple[str, float, float]]] = {}
    for t in (spec.evl_temporal_task, spec.evl_static_task):
        full = at.get((spec.evl_full, t))
        if full is None or full.acc is None:
            return Verdict(claim, None, f"{spec.evl_full} did not run on {t}")
        drops[t] = [
            (r, _gap(full, at[(r, t)]), _noise(full, at[(r, t)])) for r in spec.evl_off if (r, t) in at
        ]
    temporal, static = drops[spec.evl_temporal_task], drops[spec.evl_static_task]
    if not temporal or not static:
        return Verdict(claim, None, "the modules-off rows did not run on both tasks")
    matter = max(d for _, d, _ in temporal) >= max(5.0, max(n for _, _, n in temporal))
    flat = all(abs(d) <= max(2.0, n) for _, d, n in static)
    text = "; ".join(f"{t}: " + ", ".join(f"{r} {-d:+.1f} pts (noise {n:.1f})" for r, d, n in ds)
                     for t, ds in drops.items())  # fmt: skip
    return Verdict(claim, matter and flat, text)


def _memory(at: dict, spec: ClaimsSpec) -> Verdict:
    claim = f"memory wins on {spec.memory_task} for a few percent more compute (MeMViT)"
    mem, base = (
        at.get((spec.memory or "", spec.memory_task)),
        at.get((spec.memory_base or "", spec.memory_task)),
    )
    if mem is None or base is None or mem.acc is None or base.acc is None:
        return Verdict(claim, None, "no memory / M = 0 rows on that task (claims.memory, claims.memory_base)")
    gain, more = _gap(mem, base), mem.train_s / base.train_s - 1
    ok = gain > _noise(mem, base) and gain > 0 and more <= 0.10
    return Verdict(claim, ok, f"{mem.row} {_pct(mem)}% vs {base.row} {_pct(base)}% (+{gain:.1f} pts, noise "
                              f"{_noise(mem, base):.1f}) for {more:+.0%} training time")  # fmt: skip


def _multigrid(at: dict, tasks: list[str], spec: ClaimsSpec) -> Verdict:
    claim = "multigrid trains >= 2.5x faster at <= 1 point loss (Wu et al.)"
    if not spec.multigrid or not spec.multigrid_base:
        return Verdict(claim, None, "no rows named for it (claims.multigrid, claims.multigrid_base)")
    parts, oks = [], []
    for t in tasks:
        mg, base = at.get((spec.multigrid, t)), at.get((spec.multigrid_base, t))
        if mg is None or base is None or mg.acc is None or base.acc is None:
            continue
        speed, loss = base.train_s / mg.train_s, -_gap(mg, base)
        oks.append(speed >= 2.5 and loss <= max(1.0, _noise(mg, base)))
        parts.append(f"{t}: {speed:.2f}x faster, {loss:+.1f} pts lost ({_pct(mg)}% vs {_pct(base)}%)")
    if not oks:
        return Verdict(claim, None, "the named rows did not run on a common task")
    return Verdict(claim, all(oks), "; ".join(parts))


def _int8(at: dict, tasks: list[str], spec: ClaimsSpec) -> Verdict:
    claim = "a head trained from an int8 store ends within 0.5 points of the same head from a float16 store"
    parts, oks = [], []
    for half, quarter in spec.int8:
        for t in tasks:
            a, b = at.get((half, t)), at.get((quarter, t))
            if a is None or b is None or a.acc is None or b.acc is None:
                continue
            loss = _gap(a, b)
            oks.append(loss <= 0.5)
            saved = f", {1 - b.bytes_per_frame / a.bytes_per_frame:.0%} fewer bytes" if (
                a.bytes_per_frame and b.bytes_per_frame) else ""  # fmt: skip
            parts.append(f"{t}: {quarter} {_pct(b)}% vs {half} {_pct(a)}% ({-loss:+.1f} pts, noise "
                         f"{_noise(a, b):.1f}{saved})")  # fmt: skip
    if not oks:
        return Verdict(claim, None, "the named rows did not run on a common task")
    return Verdict(claim, all(oks), "; ".join(parts))


def claims_text(verdicts: list[Verdict]) -> str:
    word = {True: "reproduced", False: "NOT reproduced", None: "not tested"}
    return "\n".join(f"- **{word[v.reproduced]}**: {v.claim}. {v.evidence}" for v in verdicts)
