"""Fixtures for the store tests: fresh stores, filled stores (small and large shards), writer processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from store import PartWriter, create_store
from tests.store.synthetic import LARGE_SHARD_MB, SMALL_SHARD_MB, frozen_weights, make_spec, make_video

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
N_VIDEOS = 8  # enough for ragged lengths to straddle many small shards; reads cost ~3 ms a call


@pytest.fixture
def new_store(tmp_path: Path) -> Callable[..., Path]:
    """``new_store(**spec_kw)`` creates an empty store (with frozen weights) and returns its path."""

    def make(name: str = "store.zarr", **spec_kw: Any) -> Path:
        path = tmp_path / name
        create_store(path, make_spec(**spec_kw), frozen=frozen_weights())
        return path

    return make


def fill(
    path: Path,
    first: int,
    count: int,
    *,
    seed: int = 0,
    part: str = "p0000",
    max_rows: int = 50,
    **writer_kw: Any,
) -> dict:
    """Add videos ``first..first+count-1`` to a part; returns {id: (entry, views)} of what was written."""
    written = {}
    with PartWriter(path, part, **writer_kw) as w:
        for i in range(first, first + count):
            entry, views = make_video(seed, i, max_rows=max_rows)
            w.add(entry, views)
            written[entry.id] = (entry, views)
    return written


@pytest.fixture(scope="module", params=[SMALL_SHARD_MB, LARGE_SHARD_MB], ids=["small-shards", "large-shards"])
def filled_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict]]:
    """A store written in two sessions (close, reopen, add more), with what went in, per video id."""
    path = tmp_path_factory.mktemp("filled") / "store.zarr"
    create_store(path, make_spec(shard_mb=request.param), frozen=frozen_weights())
    written = fill(path, 0, N_VIDEOS // 2, commit_interval_s=0.0)  # flushed after every video
    written |= fill(
        path, N_VIDEOS // 2, N_VIDEOS - N_VIDEOS // 2, commit_interval_s=3600.0
    )  # flushed on close
    yield path, written


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small-shard store with 6 committed videos (up to 20 rows a view), written once; never modify it.
    Per-chunk crc32c is on, so damaged bytes also fail the read itself."""
    path = tmp_path_factory.mktemp("pristine") / "store.zarr"
    create_store(path, make_spec(shard_mb=SMALL_SHARD_MB, chunk_crc=True), frozen=frozen_weights())
    fill(path, 0, 6, max_rows=20, commit_interval_s=0.0)
    return path


@pytest.fixture
def store_copy(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of ``pristine`` that a test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "store.zarr"))


def file_state(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content: equal states mean nothing was written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def writer_cmd(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.store.writer_proc", str(store), *args]


def start_writer(store: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``tests/store/writer_proc.py`` on ``store``; read its progress from ``proc.stdout``."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        writer_cmd(store, *args), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"writer failed ({proc.returncode}):\n{out}\n{err}"
    return out
