"""Library code logs through ``logging``: levels from ``twostage --verbose/--quiet``, and each line names the
DDP rank and the worker (decode process, data-loader worker) it came from."""

from __future__ import annotations

import io
import logging
import multiprocessing as mp

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.cli import main
from stages.core import log
from stages.core.errors import ConfigError


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    """Each test's setup() is undone: handlers, package levels, the level variable."""
    monkeypatch.setenv(log.LEVEL_ENV, "INFO")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    root = logging.getLogger()
    handlers, levels = list(root.handlers), {n: logging.getLogger(n).level for n in log.PACKAGES}
    yield
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    log._context.clear()


def test_a_line_carries_time_level_logger_and_message_and_the_rank_under_ddp(monkeypatch):
    stream = io.StringIO()
    log.setup("INFO", stream=stream)
    logging.getLogger("stages.train.loop").info("epoch %d/%d", 1, 3)
    logging.getLogger("stages.train.loop").debug("not shown at INFO")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    logging.getLogger("store.writer").warning("slow commit")
    first, second = stream.getvalue().splitlines()
    assert first.endswith(" INFO    stages.train.loop: epoch 1/3") and first[2] == ":"  # HH:MM:SS
    assert second.endswith(" WARNING [rank 1] store.writer: slow commit")


def test_setup_twice_replaces_the_handler_and_other_libraries_stay_quiet():
    stream = io.StringIO()
    log.setup("DEBUG", stream=stream)
    log.setup("DEBUG", stream=stream)
    logging.getLogger("pipeline.run").debug("once")
    logging.getLogger("urllib3").info("third-party chatter")
    assert stream.getvalue().count("once") == 1 and "chatter" not in stream.getvalue()
    with pytest.raises(ConfigError, match=r"log level 'LOUD' is not one of DEBUG, INFO.*TWOSTAGE_LOG_LEVEL"):
        log.setup("LOUD")


def _where_in_child(queue) -> None:
    queue.put(log.where())


def test_a_named_child_process_is_the_worker_in_the_prefix():
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_where_in_child, args=(queue,), name="decode-2")
    proc.start()
    got = queue.get(timeout=30)
    proc.join(timeout=30)
    assert got == "[worker decode-2] " and log.where() == ""


class _Where(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> str:
        return log.where()


def test_a_data_loader_worker_is_named_in_the_prefix():
    got = list(DataLoader(_Where(), batch_size=None, num_workers=1, multiprocessing_context="fork"))
    assert got == ["[worker loader-0] "] * 2
    log.set_context(rank=3, worker="w7")
    assert log.where() == "[rank 3 worker w7] "


@pytest.mark.parametrize(
    ("flags", "level"), [([], logging.INFO), (["--quiet"], logging.WARNING), (["-v"], logging.DEBUG)]
)
def test_cli_log_flags_set_the_level_of_our_loggers(flags, level, capsys):
    assert main([*flags, "--list-heads"]) == 0
    assert "linear" in capsys.readouterr().out  # the command's own output is unchanged
    assert all(logging.getLogger(n).level == level for n in log.PACKAGES)


def test_the_training_loop_reports_through_logging_not_stdout(tmp_path, caplog, capsys):
    from stages.train.loop import LoopSettings, Step, fit, make_optimizer, param_groups
    from stages.train.runtime import Dist

    class Data:
        def __len__(self) -> int:
            return 2

        def batches(self, epoch: int, start: int = 0):
            for _ in range(start, 2):
                yield torch.ones(2, 4), torch.tensor([0, 1])

    def step(model, batch, state):
        logits = model(batch[0])
        return Step(torch.nn.functional.cross_entropy(logits, batch[1]), logits, batch[1]), state

    model = torch.nn.Linear(4, 2)
    opt = make_optimizer(
        param_groups(list(model.named_parameters()), lr=1e-3, weight_decay=0.0), betas=(0.9, 0.9)
    )
    with caplog.at_level(logging.INFO, logger="stages.train.loop"):
        fit(model, data=Data(), optimizer=opt, schedule=lambda s: 1.0, step_fn=step, evaluate=None,
            settings=LoopSettings(out=str(tmp_path), epochs=1, plots=False), meta={}, dist=Dist(),
            device=torch.device("cpu"))  # fmt: skip
    assert [r.getMessage().split("  ")[0] for r in caplog.records] == ["epoch 1/1"]
    assert "epoch" not in capsys.readouterr().out
