"""Concurrency: writers in separate processes own separate parts; a part has one live writer at a time."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from stages.core.errors import StoreError
from store import FeatureStore, PartWriter, verify
from tests.store.conftest import finish, start_writer
from tests.store.synthetic import make_video, video_id

PER_PART, MAX_ROWS = 4, 12


def traced_writes(trace: Path) -> tuple[set[Path], set[Path]]:
    """(paths written, paths only created-if-absent) by one writer process, from its ``--trace`` file."""
    written, create_only = set(), set()
    for line in trace.read_text().splitlines():
        path, exclusive = line.rsplit(" ", 1)
        (create_only if exclusive == "1" else written).add(Path(path))
    return written, create_only


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_two_writer_processes_on_two_parts(new_store, tmp_path):
    store = new_store(shard_mb=0.001).resolve()  # ~1 KB shards: many shard files per part
    root_meta = (store / "zarr.json").read_bytes()
    procs = {
        part: start_writer(
            store,
            "--part",
            part,
            "--first",
            str(first),
            "--count",
            str(PER_PART),
            "--max-rows",
            str(MAX_ROWS),
            "--trace",
            str(tmp_path / f"{part}.trace"),
        )
        for part, first in (("p0000", 0), ("p0001", PER_PART))
    }
    for proc in procs.values():
        finish(proc)

    fs = FeatureStore(store)
    assert [v.id for v in fs.videos] == [video_id(i) for i in range(2 * PER_PART)]
    assert {v.id: v.part for v in fs.videos} == {
        video_id(i): "p0000" if i < PER_PART else "p0001" for i in range(2 * PER_PART)
    }
    assert verify(store) == []
    for i in range(2 * PER_PART):
        _, views = make_video(0, i, max_rows=MAX_ROWS)
        for v in views:
            got = fs.read(video_id(i), v.view, tensors=["b2.tokens", "final.cls"], dequantise=False)
            for name in got:
                np.testing.assert_array_equal(got[name], np.asarray(v.tensors[name]).astype(np.float16))

    parts = {part: store / "parts" / part for part in procs}
    for part, folder in parts.items():
        written, create_only = traced_writes(tmp_path / f"{part}.trace")
        assert written and all(folder in p.parents for p in written), f"{part} wrote outside its part"
        assert create_only <= {store / "zarr.json", store / "parts/zarr.json"} | {
            p for p in create_only if folder in p.parents
        }  # parents: create-if-absent only, never rewritten
        shard_files = {p for p in files_under(folder / "b2.tokens" / "c")}
        assert len(shard_files) > 2 and shard_files <= written  # every shard on disk came from this writer
    arrays = {
        part: {p.relative_to(folder).parts[0] for p in files_under(folder)} for part, folder in parts.items()
    }
    assert arrays["p0000"] == arrays["p0001"] and "b2.tokens" in arrays["p0000"]  # same arrays, own folders
    assert not files_under(parts["p0000"]) & files_under(parts["p0001"])
    assert (store / "zarr.json").read_bytes() == root_meta  # the root attributes were never rewritten


def test_second_writer_on_a_live_part_is_refused_and_a_dead_owner_is_taken_over(new_store):
    store = new_store(shard_mb=0.001)
    proc = start_writer(store, "--count", "2", "--max-rows", str(MAX_ROWS), "--hold", "60")
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(3)]
    assert lines[0].startswith("open") and lines[2] == f"added {video_id(1)}", lines
    try:
        with pytest.raises(StoreError, match=rf"LOCK.*(?s:.*)|pid {proc.pid}") as info:
            PartWriter(store, "p0000")
        assert "LOCK" in str(info.value) and str(proc.pid) in str(info.value)
        with PartWriter(store, "p0001") as other:  # another part is free
            other.add(*make_video(0, 9, max_rows=MAX_ROWS))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert json.loads((store / "parts/p0000/LOCK").read_text())["pid"] == proc.pid  # left behind by the kill

    with PartWriter(store, "p0000") as w:  # its owner is dead: taken over
        assert w.committed_ids() == {video_id(0), video_id(1)}
        assert json.loads((store / "parts/p0000/LOCK").read_text())["pid"] == os.getpid()
        w.add(*make_video(0, 2, max_rows=MAX_ROWS))
    assert not (store / "parts/p0000/LOCK").exists()  # released on close
    assert [v.id for v in FeatureStore(store).videos] == [video_id(i) for i in (0, 1, 2, 9)]
    assert verify(store) == []


@pytest.mark.parametrize(
    ("owner", "steal", "refused"),
    [
        ({"host": "another-host", "pid": 1}, False, True),  # a remote writer cannot be checked: never taken
        ({"host": socket.gethostname(), "pid": os.getppid()}, False, True),  # a live local process
        ({"host": socket.gethostname(), "pid": 2**22 + 12345}, False, False),  # no such pid: dead
        ({"host": "another-host", "pid": 1}, True, False),  # steal_lock=True overrides
    ],
)
def test_lock_owner_rules(new_store, owner, steal, refused):
    store = new_store()
    (store / "parts/p0000").mkdir(parents=True)
    (store / "parts/p0000/LOCK").write_text(json.dumps(owner | {"time": time.time()}))
    if refused:
        with pytest.raises(StoreError, match="LOCK"):
            PartWriter(store, "p0000", steal_lock=steal)
        assert json.loads((store / "parts/p0000/LOCK").read_text())["pid"] == owner["pid"]  # untouched
        assert not list((store / "parts/p0000").glob("LOCK.*"))  # no temp file left behind
    else:
        PartWriter(store, "p0000", steal_lock=steal).close()


@pytest.mark.slow  # the race window is microseconds: the next test forces it deterministically
def test_two_processes_opening_one_part_at_the_same_instant(new_store):
    store = new_store()
    start_at = time.time() + 1.5  # both processes are imported and waiting by then
    procs = [
        start_writer(store, "--count", "0", "--hold", "0.5", "--start-at", repr(start_at)) for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    opened = [o for o in outs if o.startswith("open")]
    refused = [o for o in outs if o.startswith("error") and "LOCK" in o]
    assert len(opened) == 1 and len(refused) == 1, outs


def test_a_lock_taken_between_check_and_create_is_respected(new_store, monkeypatch):
    """Deterministic version of the race above: another live writer creates LOCK while we prepare ours."""
    store = new_store()
    (store / "parts/p0000").mkdir(parents=True)
    lock = store / "parts/p0000/LOCK"
    other = {"host": socket.gethostname(), "pid": os.getppid(), "time": time.time()}
    write_text = Path.write_text

    def racing_write_text(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.name.startswith("LOCK.") and not lock.exists():
            write_text(lock, json.dumps(other))  # the other writer wins by a hair
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", racing_write_text)
    with pytest.raises(StoreError, match="LOCK"):
        PartWriter(store, "p0000")
    assert json.loads(lock.read_text())["pid"] == other["pid"]
