"""Logging: library modules log through ``logging.getLogger(__name__)``; a command line calls :func:`setup`
once (``twostage --verbose`` / ``--quiet``, or ``TWOSTAGE_LOG_LEVEL=DEBUG``). Progress bars (tqdm) stay
bars, and what a command answers (tables, JSON, one-line errors) stays on stdout/stderr as it was.

Every line says where it came from, so the lines of many processes can be told apart:

    00:51:02 INFO    [rank 1] stages.train.loop: epoch 3/10  loss 0.4123  top1 0.811 ...
    00:51:04 WARNING [worker loader-0] stages.train.data: skipping damaged video 'v007': ...

``rank``: the DDP rank (torchrun's ``RANK`` when ``WORLD_SIZE`` > 1). ``worker``: the dask worker inside a
dask task, the data-loader worker, or the named child process (``decode-3``); :func:`set_context` may say
either explicitly. Child processes started by spawn or forkserver do not inherit logging: they call
:func:`setup_child`, which reads the level the parent's :func:`setup` left in ``TWOSTAGE_LOG_LEVEL``.

Example:
    >>> import logging, io
    >>> setup("INFO", stream=io.StringIO())
    >>> logging.getLogger("stages.demo").getEffectiveLevel() == logging.INFO
    True
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from typing import IO, Any

LEVEL_ENV = "TWOSTAGE_LOG_LEVEL"  # the level, for child processes and for `python -m stages.*` / torchrun
PACKAGES = ("stages", "store", "pipeline", "benchmarks")  # our loggers; other libraries stay at WARNING
FORMAT = "%(asctime)s %(levelname)-7s %(where)s%(name)s: %(message)s"
_context: dict[str, str] = {}


def set_context(*, rank: int | None = None, worker: str | None = None) -> None:
    """Name this process in every later log line (overrides what :func:`where` finds by itself)."""
    if rank is not None:
        _context["rank"] = str(rank)
    if worker is not None:
        _context["worker"] = worker


def where() -> str:
    """``"[rank R worker W] "`` for what is known of this process, ``""`` for a plain single process."""
    rank = _context.get("rank")
    if rank is None and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        rank = os.environ.get("RANK")
    worker = _context.get("worker") or _dask_worker() or _loader_worker() or _child_process()
    parts = ([f"rank {rank}"] if rank is not None else []) + ([f"worker {worker}"] if worker else [])
    return f"[{' '.join(parts)}] " if parts else ""


def _dask_worker() -> str | None:
    if "distributed" not in sys.modules:  # never import dask just to log
        return None
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):  # ValueError: not inside a dask task
        return None


def _loader_worker() -> str | None:
    data = sys.modules.get("torch.utils.data")  # stages.core never imports torch; a loader worker has it
    info = data.get_worker_info() if data is not None else None
    return None if info is None else f"loader-{info.id}"


def _child_process() -> str | None:
    name = multiprocessing.current_process().name
    return None if name == "MainProcess" else name


class _Where(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.where = where()
        return True


class _Stream(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (or a given stream): redirections made later still apply."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__(stream)
        self._fixed = stream

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # StreamHandler.__init__ assigns it; the property decides


def level_of(value: int | str) -> int:
    """A level from ``logging.INFO``, ``"info"`` or ``"DEBUG"``; a clear error for anything else."""
    if isinstance(value, int):
        return value
    level = logging.getLevelName(str(value).upper())
    if not isinstance(level, int):
        from stages.core.errors import ConfigError

        raise ConfigError(
            f"log level {value!r} is not one of DEBUG, INFO, WARNING, ERROR (set {LEVEL_ENV} to one of them)"
        )
    return level


def setup(level: int | str = "INFO", *, stream: IO[str] | None = None) -> None:
    """Send our packages' records at ``level`` and above to stderr (or ``stream``), one prefixed line each.

    Calling it again replaces the previous setup (no duplicate lines); other libraries' loggers keep the
    root's level (WARNING)."""
    value = level_of(level)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_twostage", False)]:
        root.removeHandler(old)
    handler = _Stream(stream)
    handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    handler.addFilter(_Where())
    handler._twostage = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(value)
    os.environ[LEVEL_ENV] = logging.getLevelName(value)


def setup_child(worker: str | None = None) -> None:
    """In a process that did not inherit logging (spawn, forkserver, a dask worker): log as the parent
    does, if it set a level, naming this process ``worker`` when given."""
    if worker is not None:
        set_context(worker=worker)
    level = os.environ.get(LEVEL_ENV)
    if level and not any(getattr(h, "_twostage", False) for h in logging.getLogger().handlers):
        setup(level)
