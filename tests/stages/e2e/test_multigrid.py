"""The multigrid schedule: SlowFast's algorithm epoch by epoch (methods.md §4.2-4.4), its worked example
(§4.3), the fixed defects, and bad inputs refused with the key and the fix.

``reference`` below re-derives the schedule from the text of methods.md §4.2 (written for this test, not
from stages.e2e): per long-cycle factor its shape list and average batch factor, one long cycle per LR
stage with epochs in proportion to the average batch factor, a final phase shortened by the iteration
saving, a rescale to epochs x epoch_factor; then SlowFast's LR rewrite and ``get_lr_at_epoch``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stages.core.config import from_dict
from stages.core.errors import ConfigError
from stages.e2e.config import E2EConfig
from stages.e2e.multigrid import (
    Baseline,
    Multigrid,
    epoch_records,
    format_table,
    make_plan,
    relative_iterations,
    stride_range,
)

R = 0.5**0.5
KINETICS = Baseline(frames=32, crop=224, batch=64, epochs=239, lr=0.1, policy="steps",
                    steps=(0, 94, 154, 196), lr_factors=(1, 0.1, 0.01, 0.001), warmup_epochs=34.0,
                    warmup_start_lr=0.01)  # SlowFast's Kinetics stepwise multigrid (§4.3)  # fmt: skip
FACTORS = ((0.25, R), (0.5, R), (0.5, 1.0), (1.0, 1.0))


def reference(b: Baseline, long: bool, short: bool, factors=FACTORS, short_f=(0.5, R), ef=1.5) -> list[tuple]:
    """(global batch, frames, crop, lr) per epoch, from methods.md §4.2 (long-only: the last shape of
    the list ends the run, where SlowFast itself raises IndexError). LR scaling as SlowFast: steps only."""
    size, sched = b.frames * b.crop**2, []
    lists = []
    for t, s in factors:
        T, S = round(b.frames * t), round(b.crop * s)
        crops = [b.crop * short_f[0], b.crop * short_f[1], S] if short else [S]
        lists.append([(round(size / (T * c * c)), T, S) for c in crops])
    avg = [sum(x[0] for x in shapes) / len(shapes) for shapes in lists]
    iters = 0.0
    for j in range(len(b.steps) - 1):
        for k in range(len(lists)):
            epochs = (b.steps[j + 1] - b.steps[j]) * avg[k] / sum(avg)
            iters += epochs / avg[k]
            sched.append([j, lists[k][-1], epochs])
    sched.append(
        [len(b.steps) - 1, lists[-1][-1], (b.epochs - b.steps[-1]) / (b.steps[-1] / iters) * avg[-1]]
    )
    x, total = b.epochs * ef / sum(e[2] for e in sched), 0.0
    for e in sched:
        total += e[2] * x
        e[2] = round(total)
    if long:
        steps = [0] + [e[2] for e in sched]
        steps[-1] = (steps[-2] + steps[-1]) // 2
        lrs = [b.lr_factors[e[0]] * e[1][0] if b.policy == "steps" else 1 for e in sched]
        lrs = lrs[:-1] + [lrs[-2], lrs[-1]]
        max_epoch = sched[-1][2]
    else:
        steps = [int(s * ef) for s in b.steps] if short else list(b.steps)
        lrs, max_epoch = list(b.lr_factors), int(b.epochs * ef) if short else b.epochs

    def policy(e: float) -> float:
        if b.policy == "cosine":
            return b.min_lr + (b.lr - b.min_lr) * (math.cos(math.pi * e / max_epoch) + 1) / 2
        return b.lr * lrs[max(i for i, s in enumerate(steps) if s <= e)]

    out = []
    for e in range(max_epoch):
        bf, T, S = next((s[1] for s in sched if e < s[2]), sched[-1][1]) if long else (1, b.frames, b.crop)
        lr = policy(e)
        if e < b.warmup_epochs:
            lr = b.warmup_start_lr + e * (policy(b.warmup_epochs) - b.warmup_start_lr) / b.warmup_epochs
        out.append((b.batch * bf, T, S, lr))
    return out


TINY = Baseline(frames=8, crop=32, batch=4, epochs=10, lr=0.01, policy="steps", steps=(0, 4, 7),
                lr_factors=(1, 0.1, 0.01), warmup_epochs=1.0, warmup_start_lr=0.001)  # fmt: skip
SSV2 = Baseline(frames=64, crop=224, batch=16, epochs=22, lr=0.03, policy="steps", steps=(0, 14, 18),
                lr_factors=(1, 0.1, 0.01), warmup_epochs=0.19, warmup_start_lr=1e-4)  # fmt: skip
CASES = {
    "kinetics steps, long + short": (KINETICS, True, True, {}),
    "kinetics steps, long only": (KINETICS, True, False, {}),
    "kinetics steps, short only": (KINETICS, False, True, {}),
    "kinetics cosine, long + short": (Baseline(**{**KINETICS.__dict__, "policy": "cosine"}), True, True, {}),
    "kinetics cosine, short only": (Baseline(**{**KINETICS.__dict__, "policy": "cosine"}), False, True, {}),
    "kinetics cosine, long only": (Baseline(**{**KINETICS.__dict__, "policy": "cosine"}), True, False, {}),
    "ssv2 steps, long + short": (SSV2, True, True, {}),
    "tiny steps, long + short": (TINY, True, True, {}),
    "custom factors, cosine, long + short": (
        Baseline(
            frames=16,
            crop=224,
            batch=32,
            epochs=57,
            lr=0.04,
            policy="cosine",
            steps=(0, 41, 49),
            warmup_epochs=4.0,
            min_lr=1e-4,
        ),  # fmt: skip
        True,
        True,
        {"factors": ((0.25, 0.5), (0.5, 0.75), (1.0, 1.0)), "short_f": (0.4, 0.5), "ef": 2.0},
    ),
    "custom factors, steps, long only": (
        Baseline(
            frames=16,
            crop=224,
            batch=32,
            epochs=57,
            lr=0.04,
            policy="steps",
            steps=(0, 41, 49),
            lr_factors=(1, 0.1, 0.01),
        ),  # fmt: skip
        True,
        False,
        {"factors": ((0.5, 0.5), (1.0, 1.0)), "ef": 1.0},
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_schedule_matches_the_algorithm_of_methods_4_2_epoch_by_epoch(name):
    base, long, short, kw = CASES[name]
    mg = Multigrid(long_cycle=long, short_cycle=short, long_factors=kw.get("factors", FACTORS),
                   short_factors=kw.get("short_f", (0.5, R)), epoch_factor=kw.get("ef", 1.5),
                   scale_lr=base.policy == "steps")  # SlowFast's cosine ignores the scaling  # fmt: skip
    ours = [(e.batch, e.frames, e.crop, e.lr) for e in make_plan(base, mg).epochs]
    expected = reference(
        base, long, short, kw.get("factors", FACTORS), kw.get("short_f", (0.5, R)), kw.get("ef", 1.5)
    )
    assert len(ours) == len(expected)
    for e, (a, b) in enumerate(zip(ours, expected, strict=True)):
        assert a[:3] == b[:3] and a[3] == pytest.approx(b[3], rel=1e-12, abs=1e-15), f"epoch {e}: {a} != {b}"


def test_the_worked_example_of_methods_4_3():
    plan = make_plan(KINETICS, Multigrid(long_cycle=True, short_cycle=True))
    ends = [e.end for e in plan.long_cycle]
    assert ends == [73, 110, 142, 158, 205, 228, 248, 259, 291, 308, 322, 329, 358]
    assert [(e.batch_factor, e.frames, e.crop) for e in plan.long_cycle[:4]] == [
        (8, 8, 158), (4, 16, 158), (2, 16, 224), (1, 32, 224)]  # fmt: skip
    assert plan.lr.steps[-2:] == (329, 343) and plan.lr.max_epoch == 358
    lr = {e.epoch: e.lr for e in plan.epochs}
    assert [lr[40], lr[100], lr[120], lr[150], lr[160], lr[300], lr[335], lr[350]] == pytest.approx(
        [0.8, 0.4, 0.2, 0.1, 0.08, 0.004, 0.001, 0.0001]
    )  # base 0.1 x the table's LR column
    assert lr[0] == 0.01 and lr[17] == pytest.approx(0.01 + 17 * (0.8 - 0.01) / 34)  # warmup to 8 x 0.1
    e = plan.epochs
    assert e[0].short_cycle == ((1024, 112), (512, 158), (512, 158))  # the #429 quirk, reproduced
    assert e[120].short_cycle == ((512, 112), (256, 158), (128, 224))
    assert e[357].short_cycle == ((256, 112), (128, 158), (64, 224))  # short cycle kept to the end
    assert all(b * f * c * c == pytest.approx(64 * 32 * 224**2, rel=0.05)
               for x in e for b, c in x.short_cycle for f in [x.frames])  # fmt: skip
    baseline = 239 / 64  # iterations per clip
    assert baseline / relative_iterations(plan) == pytest.approx(3.4, abs=0.05)  # "≈3.4x fewer"


@pytest.mark.parametrize("short", [True, False])
def test_every_shape_gets_the_same_iterations_within_an_lr_stage(short):
    """methods.md §4.2 step 2, measured on the plan: iterations per clip of each long-cycle entry (epochs
    over its average short-cycle batch) are equal within a stage, up to the rounding of ends to epochs."""
    plan = make_plan(KINETICS, Multigrid(long_cycle=True, short_cycle=short))
    iters: dict[int, list[float]] = {}
    epoch_iters: dict[int, list[float]] = {}  # one epoch of each entry: what rounding ends can move
    start = 0
    for entry in plan.long_cycle[:-1]:  # the final phase is not a long cycle
        per_epoch = [
            1 / (sum(b for b, _ in e.short_cycle) / len(e.short_cycle))
            for e in plan.epochs[start : entry.end]
        ]
        iters.setdefault(entry.lr_stage, []).append(sum(per_epoch))
        epoch_iters.setdefault(entry.lr_stage, []).append(per_epoch[0])
        start = entry.end
    assert sorted(iters) == [0, 1, 2] and all(len(v) == 4 for v in iters.values())
    for stage, values in iters.items():
        assert max(values) - min(values) <= max(epoch_iters[stage]), (stage, values)
    assert iters[0][0] > 1.5 * iters[2][0]  # stages differ: 94, 60 and 42 baseline epochs


def test_fixes_short_cycle_relative_to_the_current_crop_and_full_shape_final_phase():
    mg = Multigrid(long_cycle=True, short_cycle=True, short_relative="current", final_short_cycle=False)
    plan = make_plan(KINETICS, mg)
    first, final = plan.epochs[0], plan.epochs[-1]
    assert (first.batch, first.crop) == (512, 158)
    assert first.short_cycle == ((2048, 79), (1024, 112), (512, 158))  # 4x / 2x / 1x, not 2x / 1x / 1x
    assert final.short_cycle == ((64, 224),) and plan.epochs[-1].lr == pytest.approx(0.0001)
    start = plan.long_cycle[-2].end  # the final phase alone drops the short cycle
    assert plan.epochs[start - 1].short_cycle != ((64, 224),) and plan.epochs[start].short_cycle == (
        (64, 224),
    )


def test_long_cycle_only_works_and_crops_round_to_the_patch():
    plan = make_plan(KINETICS, Multigrid(long_cycle=True, crop_multiple=16))
    assert {e.short_cycle for e in plan.epochs} == {((512, 160),), ((256, 160),), ((128, 224),), ((64, 224),)}
    assert plan.long_cycle[0].crop == 158 and plan.epochs[0].crop == 160  # SlowFast's size kept in the entry
    assert plan.epochs[-1].batch == 64 and len(plan.epochs) == 358


def test_cosine_scales_the_lr_with_the_long_cycle_batch_factor_unless_asked_not_to():
    base = Baseline(**{**KINETICS.__dict__, "policy": "cosine", "warmup_epochs": 0.0})
    scaled = make_plan(base, Multigrid(long_cycle=True, short_cycle=True))
    plain = make_plan(base, Multigrid(long_cycle=True, short_cycle=True, scale_lr=False))
    for a, b in zip(scaled.epochs, plain.epochs, strict=True):
        assert a.lr == pytest.approx(b.lr * a.batch / 64)
    assert plain.epochs[100].lr == pytest.approx(0.05 * (math.cos(math.pi * 100 / 358) + 1))


def test_stride_range_keeps_the_full_span_possible():
    assert stride_range(32, 8, 2, long_cycle=True) == (2, 8)  # [2, 8] in the worked example
    assert stride_range(32, 16, 2, long_cycle=True) == (2, 4)
    assert stride_range(32, 32, 2, long_cycle=True) == stride_range(32, 8, 2, long_cycle=False) == (2, 2)


def cfg_dict(**multigrid) -> dict:
    return {"data": {"source": "x.csv", "frames": 8, "crop": 32, "batch_size": 4},
            "optim": {"epochs": 10, "steps": [0, 4, 7]},
            "multigrid": {"long_cycle": True, "short_cycle": True,
                          "crop_multiple": 8} | multigrid}  # fmt: skip


@pytest.mark.parametrize(
    "multigrid, match",
    [
        (
            {"long_factors": [[0.25, 0.1], [1, 1]]},
            r"long_factors\[0\]=\[0.25, 0.1\] gives a 3 px crop, under half a 8 px patch",
        ),
        (
            {"long_factors": [[0.05, 1], [1, 1]]},
            r"long_factors\[0\]=\[0.05, 1.0\] gives 0 frames of data.frames=8",
        ),
        ({"long_factors": [[0.5, 1], [1, 2]]}, r"larger than the full shape"),
        ({"long_factors": [[0.5, 1], [1, 0.75]]}, r"the last must be \[1, 1\]"),
        ({"short_factors": [0.1, 0.5]}, r"short_factors\[0\]=0.1 of a 32 px crop gives a 3 px crop"),
        (
            {"long_factors": [[0.5, 0.5], [1, 1]], "short_factors": [0.5, 0.9]},
            r"0.9: its 29 px crop is larger than the 16 px long-cycle crop.*short_relative=current",
        ),
    ],
)
def test_bad_factors_are_refused_as_the_config_loads(multigrid, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(E2EConfig, cfg_dict(**multigrid))


def test_long_cycle_without_lr_stages_and_short_lr_factors_are_refused():
    bad = cfg_dict() | {"optim": {"epochs": 10, "steps": [0], "schedule": "steps", "lr_factors": []}}
    with pytest.raises(ConfigError) as e:
        from_dict(E2EConfig, bad)
    assert "one long cycle per LR stage" in str(e.value) and "optim.lr_factors=[] has 0 values" in str(
        e.value
    )


def test_print_schedule_prints_a_table_or_one_json_object_per_epoch(tmp_path, capsys):
    from pipeline.commands.e2e import main

    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(cfg_dict()))
    assert main([str(config), "--print-schedule", "--json", "optim.epochs=8", "optim.steps=[0,3,6]"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 12 and set(lines[0]) == {"epoch", "lr_stage", "batch", "frames", "crop", "lr",
                                                   "short_cycle"}  # fmt: skip
    assert lines[0]["short_cycle"] == [[64, 16], [32, 24], [32, 24]] and lines[0]["frames"] == 2
    assert main([str(config), "--print-schedule"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| epochs | LR stage |") and "15 epochs (baseline 10)" in table
    plan = make_plan(KINETICS, Multigrid(long_cycle=True, short_cycle=True))
    assert epoch_records(plan)[-1]["epoch"] == 357 and "| 343-358 | 3 |" in format_table(plan)


def test_help_is_fast_and_lists_the_keys():
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "stages.e2e", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).parents[3], check=True).stdout  # fmt: skip
    assert "multigrid.long_factors" in out and "--print-schedule" in out and time.perf_counter() - t0 < 20
