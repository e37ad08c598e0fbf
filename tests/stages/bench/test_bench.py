"""`twostage bench`: the runner on a two-row, one-seed config, the summary arithmetic, the claims."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main as cli
from stages.bench import report
from stages.bench.config import BenchConfig, ClaimsSpec, RowSpec, TaskSpec
from stages.bench.report import Cell
from stages.core.config import from_dict
from stages.core.errors import ConfigError

SMALL = {
    "seeds": [0],
    "extract": {
        "backbone": {"name": "test_timm_vit", "batch_frames": 32},
        "tensors": ["final.cls"],
        "sampling": {"mode": "clips", "frames": 4, "stride": 2, "temporal_views": 1, "spatial_views": 1},
        "run": {"decode_workers": 1},
    },
    "train": {
        "data": {"frames": 4, "batch_size": 8, "workers": 0, "val_fraction": 0.34},
        "optim": {"epochs": 2, "lr": 3e-3},
        "run": {"log_every": 1000},
    },
    "tasks": [{"name": "dir", "kind": "direction", "videos": 12, "frames": 8, "size": 32, "classes": 2}],
    "rows": [{"label": "linear", "head": "linear"}],
}


def test_two_rows_one_seed_give_the_table_the_plot_and_the_records(tmp_path: Path, capsys) -> None:
    rows = [
        {"label": "linear", "head": "linear"},
        {"label": "vivit", "head": "vivit_fe", "options": {"depth": 1}},
    ]
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(json.dumps({**SMALL, "rows": rows, "out": str(tmp_path / "out")}))
    assert cli(["bench", str(cfg)]) == 0
    out = tmp_path / "out"
    md = (out / "results.md").read_text()
    header = md.splitlines()[0]
    assert header == "| method | dir top-1 % | dir cost s | peak MB | stored B/frame |"
    body = [line for line in md.splitlines()[2:4]]
    assert [line.split("|")[1].strip() for line in body] == ["linear", "vivit"]
    data = json.loads((out / "results.json").read_text())
    recs = data["records"]
    assert [(r["row"], r["seed"]) for r in recs] == [("linear", 0), ("vivit", 0)]
    for r in recs:
        assert 0.0 <= r["top1"] <= 1.0 and r["peak_mb"] > 50
        assert r["cost_s"] == pytest.approx(r["extract_s"] + r["train_s"]) and r["train_s"] > 0
        assert r["bytes_per_frame"] == 32 * 2  # final.cls of the 32-wide test ViT, float16
    assert recs[0]["extract_s"] == recs[1]["extract_s"] > 0  # one extraction, paid by every row
    assert (out / "bench.png").stat().st_size > 1000
    assert "not tested" in md  # no claim rows in this config: said, not invented
    # A second run reuses every measured job: same figures, nothing retrained.
    assert cli(["bench", str(cfg)]) == 0
    again = json.loads((out / "results.json").read_text())["records"]
    assert [r["train_s"] for r in again] == [r["train_s"] for r in recs]


def _cell(row: str, task: str, acc: float, cost: float, std: float = 0.0, seeds: int = 3) -> Cell:
    return Cell(
        row=row, task=task, acc=acc, acc_std=std, cost_s=cost, train_s=cost, peak_mb=100.0, seeds=seeds
    )


def test_summary_is_mean_and_sample_std_over_seeds() -> None:
    runs = [(0.5, 10.0, 100.0), (0.7, 12.0, 300.0), (0.6, 14.0, 200.0)]
    recs = [{"row": "a", "task": "t", "seed": s, "top1": acc, "cost_s": c, "train_s": c - 1, "peak_mb": m}
            for s, (acc, c, m) in enumerate(runs)]  # fmt: skip
    (cell,) = report.summarise(recs)
    assert cell.acc == pytest.approx(0.6) and cell.acc_std == pytest.approx(0.1)
    assert (
        cell.cost_s == pytest.approx(12.0) and cell.train_s == pytest.approx(11.0) and cell.peak_mb == 300.0
    )


def test_claims_are_decided_by_the_numbers() -> None:
    spec = ClaimsSpec(gowda_frozen=["vivit"], gowda_e2e="e2e", evl_full="evl", evl_off=["evl -conv"],
                      memory="mem", memory_base="mem0", multigrid="mg", multigrid_base="e2e")  # fmt: skip
    cells = [
        _cell("vivit", "direction", 0.80, 40), _cell("e2e", "direction", 0.80, 100),
        _cell("evl", "direction", 0.90, 30), _cell("evl -conv", "direction", 0.60, 30),
        _cell("evl", "appearance", 0.90, 30), _cell("evl -conv", "appearance", 0.895, 30),
        _cell("mem", "longrange", 0.95, 105), _cell("mem0", "longrange", 0.50, 100),
        _cell("mg", "direction", 0.795, 30),
    ]  # fmt: skip
    gowda, evl, mem, mg = report.claims(cells, spec)
    assert gowda.reproduced is True and "40%" in gowda.evidence
    assert evl.reproduced is True and "-30.0 pts" in evl.evidence
    assert mem.reproduced is True and "+45.0 pts" in mem.evidence and "+5%" in mem.evidence
    assert mg.reproduced is True and "3.33x" in mg.evidence
    worse = [
        _cell("vivit", "direction", 0.70, 40), _cell("e2e", "direction", 0.80, 100),  # 10 points short
        _cell("evl", "direction", 0.90, 30), _cell("evl -conv", "direction", 0.89, 30),  # no drop
        _cell("evl", "appearance", 0.90, 30), _cell("evl -conv", "appearance", 0.89, 30),
        _cell("mem", "longrange", 0.95, 150), _cell("mem0", "longrange", 0.50, 100),  # 50% more time
        _cell("mg", "direction", 0.795, 60),  # only 1.67x faster
    ]  # fmt: skip
    assert [v.reproduced for v in report.claims(worse, spec)] == [False, False, False, False]
    assert [v.reproduced for v in report.claims(cells, ClaimsSpec())] == [None, None, None, None]


def test_the_int8_claim_is_within_half_a_point_per_pair_and_task() -> None:
    def cell(row: str, task: str, acc: float, stored: int) -> Cell:
        return Cell(row=row, task=task, acc=acc, acc_std=0.0, cost_s=10, train_s=10, peak_mb=1, seeds=1,
                    bytes_per_frame=stored)  # fmt: skip

    spec = ClaimsSpec(int8=[["f16", "i8"]])
    close = [cell("f16", "a", 0.900, 200), cell("i8", "a", 0.896, 100), cell("f16", "b", 0.8, 200),
             cell("i8", "b", 0.81, 100)]  # fmt: skip
    *_, verdict = report.claims(close, spec)
    assert verdict.reproduced is True and "a: i8 89.6 ± 0.0% vs f16 90.0 ± 0.0% (-0.4 pts" in verdict.evidence
    assert "50% fewer bytes" in verdict.evidence
    close[1] = cell("i8", "a", 0.894, 100)  # 0.6 points lost on one task
    assert report.claims(close, spec)[-1].reproduced is False
    assert len(report.claims(close, ClaimsSpec())) == 4  # not asked for: not listed


def test_rows_must_name_earlier_rows_and_known_tasks() -> None:
    def bench(rows: list[dict]) -> BenchConfig:
        return from_dict(BenchConfig, {"tasks": [{"name": "t"}], "rows": rows})

    with pytest.raises(ConfigError, match="must be an earlier row"):
        bench([{"label": "b", "init_from": "a"}, {"label": "a"}])
    with pytest.raises(ConfigError, match="not an e2e row"):
        bench([{"label": "a"}, {"label": "b", "backbone_from": "a"}])
    with pytest.raises(ConfigError, match="unknown tasks"):
        bench([{"label": "a", "tasks": ["nope"]}])
    with pytest.raises(ConfigError, match="unique"):
        bench([{"label": "a"}, {"label": "a"}])
    assert bench([{"label": "a"}, {"label": "b", "init_from": "a"}]).rows[1] == RowSpec(
        label="b", init_from="a"
    )
    assert TaskSpec(name="t").kind == "direction"


def test_a_typo_in_any_row_fails_before_any_work(tmp_path: Path) -> None:
    from stages.bench.runner import run_bench

    cfg = from_dict(
        BenchConfig, {**SMALL, "out": str(tmp_path), "rows": [{"label": "x", "train": {"optim.lrr": 1}}]}
    )
    with pytest.raises(ConfigError, match="lrr"):
        run_bench(cfg)
    assert not (tmp_path / "dir").exists()  # nothing generated, nothing extracted
