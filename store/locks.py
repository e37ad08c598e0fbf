"""Locks: one live writer per part, one owner for creating or deleting a store, and what other processes
can learn about the writers.

A part's ``LOCK`` file holds the writer's host and pid (``store/layout.py``). A writer takes it atomically;
a dead local owner's lock is taken over; a live one (or one on another host, which cannot be checked from
here) is refused unless the caller knows better (``steal``: a retried cluster task whose writer died on
another host).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def store_admin(root: Path, *, wait_s: float = 60.0) -> Iterator[None]:
    """Exclusive right to create, check or delete the store at ``root`` (a ``flock`` on ``ROOT.lock``
    beside it): two extractions starting at once on a new store create it once, one after the other.

    Raises:
        StoreError: another process held it for ``wait_s`` seconds.
    """
    lock = root.with_name(root.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"another process has been creating or deleting the store {root} for {wait_s:.0f} s "
                        f"(it holds {lock}); wait for it to finish, then run again"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def live_writers(root: Path) -> dict[str, str]:
    """Part name -> a readable description of its writer, for every part of the store at ``root`` whose LOCK
    names a writer that is, or may be, alive (a live local pid, or any pid on another host, which cannot be
    checked from here)."""
    out = {}
    parts = root / layout.PARTS_GROUP
    for lock in sorted(parts.glob(f"*/{layout.LOCK_FILE}")) if parts.is_dir() else []:
        owner = read_lock(root, lock.parent.name) or {}
        here = owner.get("host") == socket.gethostname()
        if here and not local_writer_alive(owner):
            continue
        where = "this host" if here else f"host {owner.get('host')} (cannot be checked from here)"
        out[lock.parent.name] = f"part {lock.parent.name}: pid {owner.get('pid')} on {where}"
    return out


def split_of(part: str) -> str:
    """The split scheme a part name belongs to: ``"plain"`` for ``p0003``, ``"of-0008"`` for
    ``p0003-of-0008``. Parts of one scheme hold disjoint videos by construction; parts of two schemes may
    overlap, so their writers must never run at the same time."""
    _, sep, count = part.partition("-of-")
    return f"of-{count}" if sep else "plain"
