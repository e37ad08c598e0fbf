"""``run.tensorboard=true``: the scalars of metrics.jsonl, also as TensorBoard events; optional package."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from stages.core.errors import ConfigError
from stages.train import outputs
from stages.train.stage import run_train
from tests.stages.train.conftest import make_cfg, read_jsonl

OPTIONS = {"head": {"name": "linear"}, "optim": {"epochs": 2}}


def jsonl_scalars(path) -> dict[tuple[str, int], float]:
    """``(type/key, step) -> value`` of every number metrics.jsonl holds after its header."""
    out = {}
    for r in read_jsonl(path)[1:]:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step"):
                out[(f"{r['type']}/{k}", r["step"])] = v
    return out


class FakeWriter:
    def __init__(self, folder, purge_step) -> None:
        self.folder, self.purge_step, self.scalars, self.closed = folder, purge_step, {}, False

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.scalars[(tag, global_step)] = value

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_tensorboard_gets_the_scalars_of_metrics_jsonl_and_a_resume_purges_later_events(
    tmp_path, store_factory, monkeypatch
):
    store = store_factory("tb", videos=8, rows=8)
    writers: list[FakeWriter] = []

    def fake(folder, purge_step) -> Any:
        writers.append(FakeWriter(folder, purge_step))
        return writers[-1]

    monkeypatch.setattr(outputs, "tensorboard_writer", fake)
    run_train(make_cfg(tmp_path, store, run={"tensorboard": True}, **OPTIONS), stop_after=1)
    run_train(make_cfg(tmp_path, store, run={"tensorboard": True}, **OPTIONS))
    first, second = writers
    assert first.folder == tmp_path / "tensorboard" and first.purge_step is None and first.closed
    steps = sorted({step for _, step in first.scalars})
    assert second.purge_step == steps[-1] + 1  # events after the checkpoint the run resumed from are dropped
    assert {"epoch/train_loss", "epoch/lr", "eval/top1", "eval/val_loss"} <= {t for t, _ in first.scalars}
    assert first.scalars | second.scalars == jsonl_scalars(tmp_path / "metrics.jsonl")


def test_asking_for_tensorboard_without_the_package_is_refused_naming_the_install(
    tmp_path, store_factory, monkeypatch
):
    store = store_factory("tb", videos=8, rows=8)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a)
    )
    with pytest.raises(ConfigError, match=r"run.tensorboard=true needs the tensorboard package: pip install"):
        run_train(make_cfg(tmp_path, store, run={"tensorboard": True}, **OPTIONS))
    assert not (tmp_path / "last.pt").exists()  # refused before any step


def test_real_tensorboard_events_read_back_as_metrics_jsonl(tmp_path, store_factory):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = store_factory("tb", videos=8, rows=8)
    run_train(make_cfg(tmp_path, store, run={"tensorboard": True}, **OPTIONS))
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    got = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    want = jsonl_scalars(tmp_path / "metrics.jsonl")
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k], rel=1e-6) for k in want)  # events store float32
