"""Multigrid batch shapes (Wu, Girshick, He, Feichtenhofer, Krähenbühl, CVPR 2020; reference/methods.md §4):
the long-cycle schedule, the learning rate, and the shape of every iteration. Pure Python (no torch).

    Baseline (T frames, S crop, global batch B, LR policy, steps, epochs) + Multigrid (factors, switches)
      --long_cycle_schedule--> [(lr stage, batch factor f, T', S', end epoch)]    (methods.md §4.2, 1-4)
      --make_plan--> per epoch: long-cycle shape (B·f, T', S'), its short cycle [(batch, crop)] repeating
                     over iterations (§4.4), and lr(epoch as a float) (§4.2, 5): steps or cosine, warmup,
                     linear scaling with the long-cycle batch factor
      --format_table / epoch_records--> what ``python -m stages.e2e CONFIG --print-schedule`` prints

The long cycle follows SlowFast's ``MultigridSchedule.get_long_cycle_schedule`` step by step, in the same
floating-point order, so the same inputs give the same epochs, shapes and learning rates. Its known
defects are fixed without changing what it gets right:

- long cycle without short cycle: SlowFast takes the third short-cycle shape of the last factor for the
  final phase and raises IndexError; here it takes the last shape of the list (the same one whenever
  SlowFast works).
- ``short_relative="current"``: short-cycle crops relative to the current long-cycle crop (4x/2x/1x
  batches in every stage). The default, ``"default"``, is SlowFast's: relative to the full crop, which
  degenerates to 2x/1x/1x in 158-px stages (SlowFast issue #429).
- ``final_short_cycle=False``: the final phase trains at the full shape only (as the paper describes);
  its length then counts full-shape iterations, so it keeps the run's iteration saving.
- ``scale_lr`` scales the LR with the long-cycle batch factor under both policies; SlowFast computes the
  scaled LRs but its cosine policy never reads them (set ``scale_lr=False`` there to reproduce it).
- the stepwise LR of stage j is ``lr_factors[j]``; SlowFast's multigrid rewrite uses ``GAMMA ** j``
  and drops ``SOLVER.LRS``: the same numbers whenever the factors are powers of one gamma (its configs).

``benchmarks/multigrid.py --slowfast CHECKOUT`` compares every epoch's shapes, short cycle and LR with
SlowFast's own functions over random configs.

Every crop may be rounded to a multiple (``crop_multiple``: a ViT needs whole patches, 158 px -> 160 for
ViT-B/16); batch sizes and epochs are SlowFast's, computed from the unrounded sizes.

Example (the worked example of methods.md §4.3):
    >>> base = Baseline(frames=32, crop=224, batch=64, epochs=239, lr=0.1, policy="steps",
    ...                 steps=(0, 94, 154, 196), lr_factors=(1, 0.1, 0.01, 0.001))
    >>> [e.end for e in long_cycle_schedule(base, Multigrid(long_cycle=True, short_cycle=True))][-1]
    358
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SQRT_HALF = 0.5**0.5
DEFAULT_LONG_FACTORS = ((0.25, SQRT_HALF), (0.5, SQRT_HALF), (0.5, 1.0), (1.0, 1.0))  # (t, s): SlowFast's
DEFAULT_SHORT_FACTORS = (0.5, SQRT_HALF)  # crop factors of short-cycle iterations 0 and 1 (SlowFast's)


@dataclass(frozen=True)
class Baseline:
    """The run without multigrid, in SlowFast's terms (plain values)."""

    frames: int  # DATA.NUM_FRAMES
    crop: int  # DATA.TRAIN_CROP_SIZE
    batch: int  # TRAIN.BATCH_SIZE, global
    epochs: int  # SOLVER.MAX_EPOCH
    lr: float  # SOLVER.BASE_LR
    policy: str = "cosine"  # SOLVER.LR_POLICY: "steps" (steps_with_relative_lrs) | "cosine"
    steps: tuple[int, ...] = (0,)  # SOLVER.STEPS: LR-stage boundaries in epochs, from 0
    lr_factors: tuple[float, ...] = (1.0,)  # SOLVER.LRS: LR multiplier of each stage ("steps")
    warmup_epochs: float = 0.0  # SOLVER.WARMUP_EPOCHS
    warmup_start_lr: float = 0.0  # SOLVER.WARMUP_START_LR (absolute)
    min_lr: float = 0.0  # SOLVER.COSINE_END_LR


@dataclass(frozen=True)
class Multigrid:
    """Multigrid switches and factors (SlowFast's MULTIGRID.* and our fixes; see the module docstring)."""

    long_cycle: bool = False
    short_cycle: bool = False
    long_factors: tuple[tuple[float, float], ...] = DEFAULT_LONG_FACTORS
    short_factors: tuple[float, float] = DEFAULT_SHORT_FACTORS
    epoch_factor: float = 1.5  # multigrid trains 1.5x the baseline's epochs (paper, SlowFast default)
    short_relative: str = "default"  # "default" (SlowFast) | "current"
    final_short_cycle: bool = True  # SlowFast keeps the short cycle in the final phase
    scale_lr: bool = True  # linear LR scaling with the long-cycle batch factor
    crop_multiple: int = 1  # round every crop to a multiple of this (1: SlowFast's sizes)


@dataclass(frozen=True)
class LongCycleEntry:
    """One row of SlowFast's long-cycle schedule: shape ``(batch_factor, frames, crop)`` until ``end``."""

    lr_stage: int
    batch_factor: int
    frames: int
    crop: int  # SlowFast's size, before rounding to crop_multiple
    end: int  # cumulative end epoch (exclusive)


@dataclass(frozen=True)
class EpochShape:
    """What one epoch trains on: its long-cycle shape and the per-iteration short cycle (global batches)."""

    epoch: int  # 0-based
    lr_stage: int
    batch: int  # global clips per iteration at the long-cycle shape
    frames: int
    crop: int
    short_cycle: tuple[tuple[int, int], ...]  # (global batch, crop) of iterations 0, 1, 2, 0, 1, 2, ...
    lr: float  # at the start of the epoch, warmup included

    def iteration(self, i: int) -> tuple[int, int]:
        """(global batch, crop) of iteration ``i`` of this epoch."""
        return self.short_cycle[i % len(self.short_cycle)]


# ---------------------------------------------------------------------------------------------- checks
def problems(base: Baseline, mg: Multigrid) -> list[str]:
    """Every reason these settings cannot be scheduled, each naming the config key and the fix."""
    out = _baseline_problems(base)
    if min(base.frames, base.crop, base.batch, base.epochs) < 1:
        return out
    if mg.crop_multiple < 1 or not mg.epoch_factor > 0:
        out.append(
            f"multigrid.crop_multiple={mg.crop_multiple} and multigrid.epoch_factor={mg.epoch_factor}: "
            "expected a multiple >= 1 and a factor > 0"
        )
        return out
    if mg.long_cycle:
        out += _long_problems(base, mg)
    if mg.short_cycle:
        out += _short_problems(base, mg)
    return out


def _baseline_problems(base: Baseline) -> list[str]:
    out = [f"{key}={v}: expected >= 1" for key, v in
           (("data.frames", base.frames), ("data.crop", base.crop), ("data.batch_size", base.batch),
            ("optim.epochs", base.epochs)) if v < 1]  # fmt: skip
    steps = list(base.steps)
    if not steps or steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        out.append(f"optim.steps={steps}: expected increasing epoch boundaries starting at 0, e.g. [0, 6, 9]")
    elif steps[-1] >= base.epochs:
        out.append(f"optim.steps={steps}: the last boundary must be below optim.epochs={base.epochs}")
    if base.policy == "steps" and len(base.lr_factors) < len(steps):
        out.append(
            f"optim.lr_factors={list(base.lr_factors)} has {len(base.lr_factors)} values for "
            f"{len(steps)} LR stages (optim.steps={steps}); give one factor per stage, e.g. [1, 0.1, 0.01]"
        )
    if base.policy == "cosine" and not base.min_lr < base.lr:
        out.append(f"optim.min_lr={base.min_lr} must be below optim.lr={base.lr} (the cosine's end)")
    if base.warmup_epochs < 0 or base.warmup_start_lr < 0:
        out.append(
            f"optim.warmup_epochs={base.warmup_epochs}, optim.warmup_start_lr={base.warmup_start_lr}: "
            "expected >= 0"
        )
    return out


def _long_problems(base: Baseline, mg: Multigrid) -> list[str]:
    out = []
    if len(base.steps) < 2:
        out.append(
            f"multigrid.long_cycle runs one long cycle per LR stage, but optim.steps={list(base.steps)} has "
            "none; give stage boundaries, e.g. optim.steps=[0, 6, 9] (the final phase follows the last)"
        )
    if not mg.long_factors:
        out.append("multigrid.long_factors is empty; expected [[t, s], ...] ending with [1, 1]")
    for i, (t, s) in enumerate(mg.long_factors):
        key = f"multigrid.long_factors[{i}]={[t, s]}"
        frames, crop = int(round(base.frames * t)), int(round(base.crop * s))
        if frames < 1 or t <= 0:
            out.append(
                f"{key} gives {frames} frames of data.frames={base.frames}; expected t with >= 1 frame"
            )
        elif not _crop_ok(crop, mg.crop_multiple):
            out.append(f"{key} gives {_too_small(crop, mg.crop_multiple)}; expected a larger s")
        elif round(base.frames * base.crop**2 / (frames * crop**2)) < 1:
            out.append(f"{key} is larger than the full shape (batch factor 0); expected t, s <= 1")
    if mg.long_factors and not out and tuple(mg.long_factors[-1]) != (1.0, 1.0):
        out.append(
            f"multigrid.long_factors ends with {list(mg.long_factors[-1])}; the last must be [1, 1], the "
            "full shape the final phase and evaluation run at"
        )
    return out


def _short_problems(base: Baseline, mg: Multigrid) -> list[str]:
    out = []
    long_crops = sorted({int(round(base.crop * s)) for _, s in mg.long_factors}) if mg.long_cycle else []
    for i, f in enumerate(mg.short_factors):
        key = f"multigrid.short_factors[{i}]={f}"
        if not 0 < f <= 1:
            out.append(f"{key}: expected a crop factor in (0, 1]")
            continue
        for crop in long_crops or [base.crop]:
            ref = base.crop if mg.short_relative == "default" else crop
            small = int(round(f * ref))
            if not _crop_ok(small, mg.crop_multiple):
                out.append(f"{key} of a {ref} px crop gives {_too_small(small, mg.crop_multiple)}")
                break
            if int(round((crop / (f * ref)) ** 2)) < 1:
                out.append(
                    f"{key}: its {small} px crop is larger than the {crop} px long-cycle crop (batch "
                    "factor 0); use smaller short factors, or multigrid.short_relative=current"
                )
                break
    return out


def _crop_ok(crop: int, multiple: int) -> bool:
    return crop >= 1 and round(crop / multiple) >= 1


def _too_small(crop: int, multiple: int) -> str:
    unit = f", under half a {multiple} px patch (multigrid.crop_multiple)" if multiple > 1 else ""
    return f"a {crop} px crop{unit}"


def snap(crop: float, multiple: int) -> int:
    """``crop`` rounded to the nearest multiple of ``multiple`` (Python's round, as SlowFast)."""
    return int(round(crop / multiple)) * multiple


# ------------------------------------------------------------------------------------- the long cycle
def _shape_lists(base: Baseline, mg: Multigrid) -> list[list[tuple[int, int, float]]]:
    """Per long-cycle factor, its short-cycle shapes ``(batch factor, T', S')``, the base shape last."""
    default_size = float(base.frames * base.crop**2)
    lists = []
    for t, s in mg.long_factors:
        base_t, base_s = int(round(base.frames * t)), int(round(base.crop * s))
        if mg.short_cycle:
            ref = base.crop if mg.short_relative == "default" else base_s
            sizes: list[float] = [ref * mg.short_factors[0], ref * mg.short_factors[1], base_s]
        else:
            sizes = [base_s]
        lists.append([(int(round(default_size / (base_t * x * x))), base_t, x) for x in sizes])
    return lists


def long_cycle_schedule(base: Baseline, mg: Multigrid) -> list[LongCycleEntry]:
    """SlowFast's long-cycle schedule (methods.md §4.2, steps 1-4), with the fixes of the module docstring.

    One long cycle per LR stage, each shape getting the same number of iterations (epochs in proportion
    to its average batch factor); a final phase at the full shape, shortened by the same iteration
    saving; everything rescaled to ``epochs x epoch_factor`` and cumulative ends rounded to integers.
    """
    lists = _shape_lists(base, mg)
    avg_bs = [sum(b for b, _, _ in shapes) / len(shapes) for shapes in lists]
    steps = list(base.steps)
    raw: list[tuple[int, tuple[int, int, float], float]] = []  # (lr stage, base shape, epochs)
    total_iters = 0.0
    for stage in range(len(steps) - 1):
        stage_epochs = steps[stage + 1] - steps[stage]
        for k, shapes in enumerate(lists):
            epochs = stage_epochs * avg_bs[k] / sum(avg_bs)
            total_iters += epochs / avg_bs[k]
            raw.append((stage, shapes[-1], epochs))
    iter_saving = steps[-1] / total_iters
    final = lists[-1][-1]  # SlowFast: lists[-1][2], an IndexError without short cycles
    final_bs = avg_bs[-1] if (mg.short_cycle and mg.final_short_cycle) else final[0]
    raw.append((len(steps) - 1, final, (base.epochs - steps[-1]) / iter_saving * final_bs))
    x = base.epochs * mg.epoch_factor / sum(e for _, _, e in raw)
    out, total = [], 0.0
    for stage, (bf, t, s), epochs in raw:
        total += epochs * x
        out.append(LongCycleEntry(stage, bf, t, int(s), int(round(total))))
    return out


def short_cycle(
    base: Baseline, mg: Multigrid, batch: int, crop: int, final: bool
) -> tuple[tuple[int, int], ...]:
    """Per-iteration (global batch, crop) at long-cycle batch ``batch`` and crop ``crop`` (methods.md §4.4):
    SlowFast's ``ShortCycleBatchSampler`` batch factors ``round((crop / (f x ref))^2)``."""
    if not mg.short_cycle or (final and not mg.final_short_cycle):
        return ((batch, snap(crop, mg.crop_multiple)),)
    ref = base.crop if mg.short_relative == "default" else crop
    shapes = [(batch * int(round((crop / (f * ref)) ** 2)), int(round(f * ref))) for f in mg.short_factors]
    return tuple((b, snap(c, mg.crop_multiple)) for b, c in [*shapes, (batch, crop)])


# ------------------------------------------------------------------------------------------ learning rate
@dataclass(frozen=True)
class LRSchedule:
    """SlowFast's ``get_lr_at_epoch`` over the (multigrid-rewritten) steps, factors and max epoch."""

    base: Baseline
    steps: tuple[int, ...]
    factors: tuple[float, ...]
    max_epoch: int
    scale: tuple[tuple[int, int], ...] = field(default=())  # cosine scaling: (end epoch, batch factor)

    def policy_lr(self, epoch: float) -> float:
        b = self.base
        if b.policy == "steps":
            return self.factors[self.step_index(epoch)] * b.lr
        lr = b.min_lr + (b.lr - b.min_lr) * (math.cos(math.pi * epoch / self.max_epoch) + 1.0) * 0.5
        return lr * self.batch_factor(epoch) if self.scale else lr

    def __call__(self, epoch: float) -> float:
        """The learning rate at ``epoch`` (a float: epoch + iteration / iterations in it)."""
        b = self.base
        if epoch < b.warmup_epochs:
            end = self.policy_lr(b.warmup_epochs)
            return epoch * ((end - b.warmup_start_lr) / b.warmup_epochs) + b.warmup_start_lr
        return self.policy_lr(epoch)

    def step_index(self, epoch: float) -> int:
        """SlowFast's ``get_step_index``: the stage of ``epoch`` among ``steps + [max_epoch]``."""
        bounds = [*self.steps, self.max_epoch]
        for i, step in enumerate(bounds):
            if epoch < step:
                return i - 1
        return len(bounds) - 2

    def batch_factor(self, epoch: float) -> int:
        for end, factor in self.scale:
            if epoch < end:
                return factor
        return self.scale[-1][1]


def lr_schedule(base: Baseline, mg: Multigrid, long: list[LongCycleEntry]) -> LRSchedule:
    """methods.md §4.2 step 5: with a long cycle, one LR step per schedule entry at ``factor[stage] x
    batch factor`` and the final phase split in halves (last stage's LR, then the next stage's); with the
    short cycle only, steps and epochs stretched by ``epoch_factor``; else the baseline's."""
    if long:
        steps = [0, *(e.end for e in long)]
        steps[-1] = (steps[-2] + steps[-1]) // 2  # the final phase's second half
        factors = [base.lr_factors[e.lr_stage] * (e.batch_factor if mg.scale_lr else 1)
                   for e in long] if base.policy == "steps" else [1.0] * len(long)  # fmt: skip
        factors = factors[:-1] + [factors[-2], factors[-1]]
        scale = tuple((e.end, e.batch_factor) for e in long) if mg.scale_lr else ()
        return LRSchedule(base, tuple(steps), tuple(factors), long[-1].end, scale)
    if mg.short_cycle:
        steps = [int(s * mg.epoch_factor) for s in base.steps]
        return LRSchedule(base, tuple(steps), base.lr_factors, int(base.epochs * mg.epoch_factor))
    return LRSchedule(base, base.steps, base.lr_factors, base.epochs)


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Plan:
    """The whole schedule: one :class:`EpochShape` per epoch, the long cycle (if any), the LR."""

    epochs: tuple[EpochShape, ...]
    long_cycle: tuple[LongCycleEntry, ...]
    lr: LRSchedule
    base: Baseline


def make_plan(base: Baseline, mg: Multigrid) -> Plan:
    """Check ``base`` and ``mg`` (ValueError listing every problem) and lay out every epoch."""
    found = problems(base, mg)
    if found:
        raise ValueError("; ".join(found))
    long = long_cycle_schedule(base, mg) if mg.long_cycle else []
    lr = lr_schedule(base, mg, long)
    final_start = long[-2].end if len(long) > 1 else lr.max_epoch
    epochs = []
    for e in range(lr.max_epoch):
        if long:
            entry = next((x for x in long if e < x.end), long[-1])  # get_current_long_cycle_shape
            stage, factor, frames, crop = entry.lr_stage, entry.batch_factor, entry.frames, entry.crop
        else:
            stage, factor, frames, crop = lr.step_index(e), 1, base.frames, base.crop
        cycle = short_cycle(base, mg, base.batch * factor, crop, final=bool(long) and e >= final_start)
        epochs.append(EpochShape(e, stage, base.batch * factor, frames, snap(crop, mg.crop_multiple),
                                 cycle, lr(float(e))))  # fmt: skip
    return Plan(tuple(epochs), tuple(long), lr, base)


def stride_range(base_frames: int, frames: int, stride: int, long_cycle: bool) -> tuple[int, int]:
    """Temporal strides a clip of ``frames`` may take (methods.md §4.5): with the long cycle, uniform in
    ``[stride, stride x (T // T')]`` so some clips keep the full-shape span; else ``stride``."""
    if not long_cycle or frames >= base_frames:
        return stride, stride
    return stride, stride * (base_frames // frames)


def relative_iterations(plan: Plan) -> float:
    """Iterations over the whole run per clip of the data set (compare ``epochs / batch`` of the baseline)."""
    return sum(1.0 / (sum(b for b, _ in e.short_cycle) / len(e.short_cycle)) for e in plan.epochs)


# ----------------------------------------------------------------------------------------------- output
def epoch_records(plan: Plan) -> list[dict]:
    """One JSON-able dict per epoch: epoch, lr_stage, batch, frames, crop, lr, short_cycle."""
    return [{"epoch": e.epoch, "lr_stage": e.lr_stage, "batch": e.batch, "frames": e.frames, "crop": e.crop,
             "lr": e.lr, "short_cycle": [list(s) for s in e.short_cycle]} for e in plan.epochs]  # fmt: skip


def format_table(plan: Plan, baseline_iterations: float | None = None) -> str:
    """The schedule as a markdown table, one row per run of epochs with the same shape and LR stage."""

    def key(e: EpochShape) -> tuple:  # the steps policy also splits at every LR step (the final halves)
        step = plan.lr.step_index(e.epoch) if plan.base.policy == "steps" else 0
        return e.lr_stage, step, e.batch, e.frames, e.crop, e.short_cycle

    rows: list[list[EpochShape]] = []
    for e in plan.epochs:
        if rows and key(rows[-1][-1]) == key(e):
            rows[-1].append(e)
        else:
            rows.append([e])
    lines = [
        "| epochs | LR stage | batch | frames | crop | iterations (batch@crop, repeating) | LR at start |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r[0]
        cycle = ", ".join(f"{b}@{c}" for b, c in e.short_cycle)
        lines.append(f"| {e.epoch}-{r[-1].epoch + 1} | {e.lr_stage} | {e.batch} | {e.frames} | {e.crop} | "
                     f"{cycle} | {e.lr:.4g} |")  # fmt: skip
    its = relative_iterations(plan)
    base = plan.base.epochs / plan.base.batch if baseline_iterations is None else baseline_iterations
    lines.append(f"\n{len(plan.epochs)} epochs (baseline {plan.base.epochs}); iterations {its / base:.3f} "
                 f"x the baseline's ({base / its:.2f}x fewer)")  # fmt: skip
    return "\n".join(lines)
