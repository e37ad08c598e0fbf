"""Durability: a writer killed with SIGKILL at any point leaves only whole, verified videos; a resume
completes the store exactly as an uninterrupted run would; a torn commit line is skipped and repaired."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from store import FeatureStore, PartWriter, create_store, verify
from tests.store.conftest import fill, start_writer
from tests.store.synthetic import frozen_weights, make_spec, make_video, snapshot, video_id

SEED, COUNT, MAX_ROWS = 7, 6, 20
TINY_SHARD_MB = 0.001  # ~1 KB shards (4 rows of b2.tokens): every video rewrites and completes shards
RNG = random.Random(20240607)  # kill points are random but reproducible
# (wait for this many "added" lines, then sleep this long); -1 lines: kill right after the start
KILL_POINTS = [(-1, 0.0), (1, RNG.uniform(0.0, 0.03)), (4, RNG.uniform(0.0, 0.03))]
SLOW_KILL_POINTS = [(0, 0.0), (0, RNG.uniform(0.0, 0.1)), (2, RNG.uniform(0.0, 0.03)), (3, 0.0), (5, 0.0)]
WRITER_ARGS = (
    "--seed",
    str(SEED),
    "--count",
    str(COUNT),
    "--max-rows",
    str(MAX_ROWS),
    "--commit-interval",
    "0",
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What the store holds after one run with no kill: the reference for every resumed run."""
    path = tmp_path_factory.mktemp("ref") / "store.zarr"
    create_store(path, make_spec(shard_mb=TINY_SHARD_MB), frozen=frozen_weights())
    fill(path, 0, COUNT, seed=SEED, max_rows=MAX_ROWS, commit_interval_s=0.0)
    assert verify(path) == []
    return snapshot(FeatureStore(path))


def new_tiny_store(tmp_path: Path) -> Path:
    store = tmp_path / "store.zarr"
    create_store(store, make_spec(shard_mb=TINY_SHARD_MB), frozen=frozen_weights())
    return store


def kill_at(store: Path, lines: int, delay: float) -> list[str]:
    """Run the writer process, SIGKILL it after ``lines`` progress lines plus ``delay`` s; its output."""
    proc = start_writer(store, *WRITER_ARGS)
    seen: list[str] = []
    assert proc.stdout is not None
    while len([s for s in seen if s.startswith("added")]) < lines or (lines == 0 and not seen):
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.strip())
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)  # reaps it and closes its pipes
    return seen + rest.splitlines()


def assert_same_video(a: dict, b: dict, vid: str) -> None:
    assert {k: v for k, v in a.items() if k != "arrays"} == {k: v for k, v in b.items() if k != "arrays"}, vid
    assert sorted(a["arrays"]) == sorted(b["arrays"]), vid
    for key in a["arrays"]:
        np.testing.assert_array_equal(a["arrays"][key], b["arrays"][key], err_msg=f"{vid} {key}")


def records(fs: FeatureStore) -> dict[str, dict]:
    """Each video's commit record as a reader sees it, without row positions (they depend on history).

    The checksum covers every stored byte of the video, and ``verify`` recomputes it from the arrays:
    equal records plus a clean ``verify`` mean equal content.
    """
    return {
        v.id: {
            "label": v.label,
            "source": v.source,
            "fps": v.fps,
            "num_frames": v.num_frames,
            "meta": v.meta,
            "view_meta": v.view_meta,
            "checksum": v.checksum,
            "views": {view: n for view, (_, n) in v.views.items()},
        }
        for v in fs.videos
    }


def reference_records(reference: dict) -> dict[str, dict]:
    return {vid: {k: x for k, x in r.items() if k != "arrays"} for vid, r in reference.items()}


def check_killed_then_resume(store: Path, reference: dict, lines: int, delay: float) -> None:
    seen = kill_at(store, lines, delay)
    assert "done" not in seen, f"the writer finished before the kill: move the kill point earlier ({seen})"
    fs = FeatureStore(store)
    ids = [v.id for v in fs.videos]
    assert ids == [video_id(i) for i in range(len(ids))], "committed videos must be a prefix of the run"
    assert len(ids) >= max(0, lines) and fs.log_problems == []
    assert verify(store) == []
    want = reference_records(reference)
    assert records(fs) == {vid: want[vid] for vid in ids}

    with PartWriter(store, "p0000", commit_interval_s=0.0) as w:  # the dead owner's LOCK is taken over
        assert w.committed_ids() == set(ids)
        for i in range(COUNT):
            if video_id(i) not in w.committed_ids():
                w.add(*make_video(SEED, i, max_rows=MAX_ROWS))
    assert verify(store) == []
    assert records(FeatureStore(store)) == want


@pytest.mark.parametrize(
    ("lines", "delay"), KILL_POINTS, ids=[f"after{n}-{d * 1000:.0f}ms" for n, d in KILL_POINTS]
)
def test_sigkill_leaves_whole_videos_and_resume_matches_an_uninterrupted_run(
    tmp_path, uninterrupted, lines, delay
):
    check_killed_then_resume(new_tiny_store(tmp_path), uninterrupted, lines, delay)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lines", "delay"), SLOW_KILL_POINTS, ids=[f"after{n}-{d * 1000:.0f}ms" for n, d in SLOW_KILL_POINTS]
)
def test_sigkill_at_more_points(tmp_path, uninterrupted, lines, delay):
    check_killed_then_resume(new_tiny_store(tmp_path), uninterrupted, lines, delay)


def test_resume_by_rerunning_the_writer_process(tmp_path, uninterrupted):
    store = new_tiny_store(tmp_path)
    seen = kill_at(store, 2, RNG.uniform(0.0, 0.02))
    assert "done" not in seen
    killed = {v.id for v in FeatureStore(store).videos}
    proc = start_writer(store, *WRITER_ARGS)  # the same command again: skips what is committed
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    added = [line.split()[1] for line in out.splitlines() if line.startswith("added")]
    assert (
        added == [video_id(i) for i in range(COUNT) if video_id(i) not in killed] and 0 < len(added) < COUNT
    )
    assert verify(store) == []
    final = snapshot(FeatureStore(store))  # decoded arrays, not only checksums
    assert sorted(final) == sorted(uninterrupted)
    for vid in final:
        assert_same_video(final[vid], uninterrupted[vid], vid)


def test_torn_last_commit_line_is_ignored_then_repaired(store_copy):
    store = store_copy  # 6 committed videos
    log = store / "parts/p0000/commits.jsonl"
    intact = log.read_bytes()
    log.write_bytes(intact + b'{"crc":"0badc0de","record":{"id":"vid_0')  # a write cut short

    fs = FeatureStore(store)
    assert [v.id for v in fs.videos] == [video_id(i) for i in range(6)]
    assert len(fs.log_problems) == 1 and "line 7" in fs.log_problems[0]
    np.testing.assert_array_equal(
        fs.read(video_id(5), 0, tensors=["final.cls"], dequantise=False)["final.cls"],
        np.asarray(make_video(0, 5, max_rows=20)[1][0].tensors["final.cls"]).astype(np.float16),
    )

    fill(store, 6, 2, max_rows=20, commit_interval_s=0.0)  # the next writer cuts the torn tail off, appends
    text = log.read_bytes()
    assert text.startswith(intact) and text.endswith(b"\n") and b"0badc0de" not in text
    fs = FeatureStore(store)
    assert [v.id for v in fs.videos] == [video_id(i) for i in range(8)]
    assert fs.log_problems == [] and verify(store) == []


def test_damaged_line_inside_the_log_is_reported_not_cut(store_copy):
    store = store_copy
    log = store / "parts/p0000/commits.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"label"', b'"lab3l"')  # valid JSON, wrong CRC
    log.write_bytes(b"".join(lines))
    fill(store, 6, 1, max_rows=20, commit_interval_s=0.0)
    assert log.read_bytes().startswith(b"".join(lines))  # a writer never cuts a damaged line inside the log
    fs = FeatureStore(store)
    assert video_id(1) not in {v.id for v in fs.videos} and len(fs) == 6
    problems = verify(store)
    assert [p["id"] for p in problems] == ["-"] and "line 2" in problems[0]["problem"]
