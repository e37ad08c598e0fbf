"""Child processes die with the extraction: a stalled, then SIGKILLed `python -m stages.extract` (what
the OOM killer does) leaves no fork server, decode worker or resource tracker behind, even with decode
workers blocked writing into a full result pipe."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_sigkill_of_the_extraction_takes_its_children_along(tmp_path: Path) -> None:
    from stages.video.synth import generate

    generate(tmp_path / "videos", task="direction", videos=48, seed=5, size=160, frames=96, fps=8.0)
    cmd = [
        sys.executable, "-m", "stages.extract", str(REPO / "configs/extract/tiny.yaml"),
        f"source={tmp_path / 'videos/labels.csv'}", f"store.path={tmp_path / 's.zarr'}", "run.progress=false",
        "sampling.mode=dense", "run.decode_workers=2",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        children = _wait_for_decode_workers(proc.pid, count=2, timeout_s=120)
        os.kill(proc.pid, signal.SIGSTOP)  # a stalled main process: the decoders fill the result pipe
        time.sleep(5.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        left = _alive_after(children, 15.0)
    finally:
        for pid in [proc.pid, *(c for c in locals().get("children", []))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert len(children) >= 4  # resource tracker, fork server, two decode workers
    assert not left, f"still running 15 s after the extraction was killed: {left}"


def _wait_for_decode_workers(pid: int, count: int, timeout_s: float) -> list[int]:
    """Every descendant of ``pid`` once the fork server has ``count`` children (the decode workers)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids = psutil.Process(pid).children(recursive=True)
        servers = [k for k in kids if "forkserver" in " ".join(k.cmdline())]
        if servers and len(servers[0].children()) >= count:
            return [k.pid for k in kids]
        time.sleep(0.2)
    raise AssertionError("the extraction never started its decode workers")


def _alive_after(pids: list[int], within_s: float) -> list[str]:
    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(p.cmdline())[:100]}")
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)
