"""Nobody silently damages a store: one owner for destructive work, one writer per video id, and a
``verify`` that sees deleted logs, edited metadata and edited labels (issue: "a store nobody can
silently damage", failures 1, 2 and 4)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from stages.core.errors import StoreCorruptError, StoreError
from store import FeatureStore, PartWriter, create_store, dedupe, finalize, verify
from store.index import read_log, write_log_line
from tests.store.conftest import fill, start_writer
from tests.store.synthetic import make_spec, make_video, video_id


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"the writer never printed {prefix!r}: {proc.stderr.read()}")  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- 1. overwrite vs a live writer


def test_overwrite_refuses_while_a_part_is_being_written(new_store):
    store = new_store()
    proc = start_writer(store, "--count", "2", "--hold", "20")
    try:
        wait_for_line(proc, "added")
        with pytest.raises(StoreError, match=r"store.overwrite=true would delete .* being written .*pid"):
            create_store(store, make_spec(name="other-vit"), overwrite=True)
        assert FeatureStore(store).spec.fingerprint == make_spec().fingerprint  # nothing was deleted
    finally:
        proc.kill()
        proc.wait()
    create_store(store, make_spec(name="other-vit"), overwrite=True)  # the writer is dead: allowed now


def test_two_creations_of_one_new_store_at_once_make_it_once(tmp_path):
    """Two processes create the same new store in the same instant; both then write their parts."""
    store = tmp_path / "new.zarr"
    at = time.time() + 3.0
    procs = [
        start_writer(
            store, "--create", "--part", part, "--first", str(first), "--count", "3", "--start-at", str(at)
        )  # fmt: skip
        for part, first in (("p0000-of-0002", 0), ("p0001-of-0002", 3))
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    fs = FeatureStore(store)
    assert sorted(v.id for v in fs.videos) == [video_id(i) for i in range(6)]
    assert verify(store) == []


def test_a_store_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "feats.zarr"
    path.write_text("not a folder")
    with pytest.raises(StoreError, match=r"store.path=.*feats.zarr is a file; a store is a folder"):
        create_store(path, make_spec())


# ----------------------------------------------------------------------------- 2. one writer per video id


def test_a_writer_of_another_split_is_refused_while_one_runs(new_store):
    store = new_store()
    proc = start_writer(store, "--count", "2", "--hold", "20")  # a plain run: part p0000
    try:
        wait_for_line(proc, "added")
        with pytest.raises(StoreError, match=r"another extraction with another split .*p0000.*--part N"):
            PartWriter(store, "p0000-of-0001")
        PartWriter(store, "p0001").close()  # the same split: disjoint by construction, allowed
    finally:
        proc.kill()
        proc.wait()


def test_an_id_committed_by_another_part_is_refused(new_store):
    store = new_store()
    fill(store, 0, 2)
    with PartWriter(store, "p0000-of-0001") as w:
        with pytest.raises(StoreError, match=r"'vid_001' is already committed in part p0000"):
            w.add(*make_video(0, 1))
        w.add(*make_video(0, 2))  # a new id is fine


def duplicated(store: Path) -> None:
    """What two overlapping extractions left before writers checked each other: the same ids twice."""
    fill(store, 0, 3)
    copy = store / "parts" / "p0000-of-0001"
    shutil.copytree(store / "parts" / "p0000", copy)
    (copy / "LOCK").unlink(missing_ok=True)


def test_duplicates_are_refused_by_the_reader_reported_by_verify_and_fixed_by_dedupe(new_store):
    store = new_store()
    duplicated(store)
    with pytest.raises(StoreCorruptError, match=r"3 video ids were committed by more than one part .*dedupe"):
        FeatureStore(store)
    problems = verify(store)
    assert {p["id"] for p in problems} == {video_id(i) for i in range(3)}
    assert all("committed by 2 parts (p0000, p0000-of-0001)" in p["problem"] for p in problems)
    assert dedupe(store) == {video_id(i): "p0000" for i in range(3)}
    fs = FeatureStore(store)
    assert [(v.id, v.part) for v in fs.videos] == [(video_id(i), "p0000") for i in range(3)]
    assert verify(store) == [] and dedupe(store) == {}
    with PartWriter(store, "p0000-of-0001") as w:  # the retracted part resumes; retractions hold no rows
        w.add(*make_video(0, 3))
    assert len(FeatureStore(store).videos) == 4 and verify(store) == []


def test_commit_refuses_a_store_with_duplicates(new_store, capsys):
    from pipeline.commit import main

    store = new_store()
    duplicated(store)
    with pytest.raises(StoreCorruptError, match="dedupe"):
        main([str(store)])


# ----------------------------------------------------------------------------- 4. verify's blind spots


def test_a_deleted_commit_log_is_reported(new_store):
    store = new_store()
    fill(store, 0, 3)
    finalize(store)
    (store / "parts/p0000/commits.jsonl").unlink()
    found = " | ".join(p["problem"] for p in verify(store))
    assert "3 indexed videos have no commit line (parts p0000)" in found
    assert "part p0000 holds" in found and "commits.jsonl is missing or empty" in found


def test_an_edited_array_dtype_is_reported(new_store):
    store = new_store()
    fill(store, 0, 2)
    meta = store / "parts/p0000/final.cls/zarr.json"
    doc = json.loads(meta.read_text())
    doc["data_type"] = "int16"
    meta.write_text(json.dumps(doc))
    found = " | ".join(p["problem"] for p in verify(store))
    assert "array final.cls is stored as int16, the store declares float16" in found


@pytest.mark.parametrize("field", ["label", "row_start"])
def test_an_edited_label_or_row_pointer_fails_the_checksum_even_with_a_valid_line_crc(new_store, field):
    store = new_store()
    fill(store, 0, 3, max_rows=10)
    log = store / "parts/p0000/commits.jsonl"
    records, _ = read_log(log)
    if field == "label":
        records[1]["label"] = (records[1]["label"] + 1) % 3
    else:
        records[1]["views"][0]["row_start"] += 1
    log.unlink()
    for r in records:  # rewritten with valid line CRCs: only the video digest can tell
        write_log_line(log, r)
    problems = verify(store)
    assert [p["id"] for p in problems] == [video_id(1)]
    assert "commit record (label, row pointers or column checksums) was changed" in problems[0]["problem"]


def test_a_reader_checks_only_the_columns_asked_for(new_store):
    store = new_store()
    fill(store, 0, 2, max_rows=10)
    fs = FeatureStore(store)
    rec = fs.videos[0]
    start, n = rec.views[0]
    array = fs.array(rec.part, "final.cls")
    values = np.asarray(array[start : start + n])
    values[0, 0] = np.nan
    array[start : start + n] = values
    assert FeatureStore(store).check(rec.id, tensors=["b2.tokens"]) == []
    found = FeatureStore(store).check(rec.id)
    assert "view 0: final.cls: checksum mismatch (changed after the commit)" in found
    assert "view 0: final.cls holds NaN/Inf values" in found
