"""Part locks: one live writer per part, and what other processes can learn about that writer.

A part's ``LOCK`` file holds the writer's host and pid (``store/layout.py``). A writer takes it atomically;
a dead local owner's lock is taken over; a live one (or one on another host, which cannot be checked from
here) is refused unless the caller knows better (``steal``: a retried cluster task whose writer died on
another host).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from store import layout
from store.errors import StoreError


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a pid we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def read_lock(store: str | os.PathLike[str], part: str) -> dict[str, Any] | None:
    """A part's LOCK (the live or dead writer's host and pid), or None when the part has none."""
    lock = Path(store) / layout.part_path(part) / layout.LOCK_FILE
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def local_writer_alive(owner: dict[str, Any]) -> bool:
    """Whether a LOCK's writer runs on this host and is alive (other hosts cannot be checked from here)."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        return pid_alive(int(owner.get("pid", -1)))
    except (TypeError, ValueError):
        return False


def acquire(lock: Path, steal: bool) -> Path:
    """Take a part's LOCK; a dead local owner's lock is taken over, a live one refused (unless ``steal``)."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    tmp = lock.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(me))
    try:
        os.link(tmp, lock)  # atomic create-if-absent: of two writers starting at once, one gets the part
        tmp.unlink()
        return lock
    except FileExistsError:
        pass
    if not steal:
        try:
            owner = json.loads(lock.read_text())
        except (OSError, ValueError):
            owner = {}
        alive = owner.get("host") != me["host"] or pid_alive(int(owner.get("pid", -1)))
        if alive and owner.get("pid") != me["pid"]:
            tmp.unlink(missing_ok=True)
            raise StoreError(
                f"part {lock.parent.name} is being written by pid {owner.get('pid')} on host "
                f"{owner.get('host')} ({lock}). Writers never share a part: wait for it, use another part, "
                "or, if that writer is dead, delete the LOCK file."
            )
    os.replace(tmp, lock)
    return lock
