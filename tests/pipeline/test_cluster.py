"""Stage one on dask (pipeline/cluster.py) and as --part runs + commit (pipeline/commit.py).

Real LocalClusters of 2 worker processes on 8 synthetic videos: the store must hold, for each video id,
the features a single-process run gives; a worker killed mid-task loses and duplicates nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline import cluster, commit
from stages.core.config import load_config
from stages.core.errors import ConfigError
from stages.extract.config import ExtractConfig
from store import FeatureStore, layout, verify
from store.index import read_log

VIDEOS = 8


# -- fixtures and helpers ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stages.video.synth import generate

    out = tmp_path_factory.mktemp("cluster_videos")
    generate(out, task="direction", videos=VIDEOS, seed=0, size=64, frames=16)
    return out


def write_config(folder: Path, videos: Path, store: Path) -> Path:
    text = f"""
source: {videos / "labels.csv"}
store: {{path: {store}, commit_interval_s: 0}}
backbone: {{name: test_openclip_vit, batch_frames: 16}}
tensors: [b0.tokens, b-1.cls, final.cls]
sampling: {{mode: clips, frames: 4, stride: 2, temporal_views: 2}}
run: {{decode_workers: 1, progress: false}}
"""
    path = folder / f"{store.name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def reference(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    """Features of a single-process run, by video id."""
    from stages.extract.stage import run_extract

    tmp = tmp_path_factory.mktemp("reference")
    cfg = load_config(ExtractConfig, write_config(tmp, videos, tmp / "single.zarr"))
    stats = run_extract(cfg)
    assert stats.committed == VIDEOS
    return features(tmp / "single.zarr")


def features(path: Path) -> dict[str, dict[str, np.ndarray]]:
    fs = FeatureStore(path)
    return {
        v.id: {f"{view}/{name}": x for view in sorted(v.views) for name, x in fs.read(v.id, view).items()}
        for v in fs.videos
    }


def assert_same_features(path: Path, reference: dict[str, dict[str, np.ndarray]]) -> None:
    got = features(path)
    assert sorted(got) == sorted(reference)
    for vid, tensors in reference.items():
        assert sorted(got[vid]) == sorted(tensors), vid
        for name, x in tensors.items():  # other batch packing: equal up to float16 rounding
            np.testing.assert_allclose(got[vid][name], x, rtol=2e-3, atol=2e-3, err_msg=f"{vid} {name}")


def commit_lines(path: Path) -> list[tuple[str, str]]:
    """(part, video id) of every commit line of every part."""
    parts = sorted(p for p in (path / layout.PARTS_GROUP).iterdir() if p.is_dir())
    return [(p.name, r["id"]) for p in parts for r in read_log(p / layout.COMMITS_FILE)[0]]


def assert_parts_disjoint(path: Path) -> None:
    """Every file under parts/ belongs to one part, each part's committed rows never overlap, no LOCK left."""
    owner: dict[Path, str] = {}
    for part in (path / layout.PARTS_GROUP).iterdir():
        assert not (part / layout.LOCK_FILE).exists(), f"{part.name} still has a LOCK"
        for f in part.rglob("*"):
            assert owner.setdefault(f.resolve(), part.name) == part.name
    fs = FeatureStore(path)
    for part in fs.parts():
        spans = sorted(span for v in fs.videos if v.part == part for span in v.views.values())
        for (s0, n0), (s1, _) in zip(spans, spans[1:], strict=False):
            assert s0 + n0 <= s1, f"rows of {part} overlap"


def assert_complete_once(path: Path) -> None:
    ids = [vid for _, vid in commit_lines(path)]
    assert not [vid for vid, n in Counter(ids).items() if n > 1], "a video was committed twice"
    assert len(set(ids)) == VIDEOS
    assert FeatureStore(path).complete
    assert verify(path) == []


# -- pure helpers -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "given, expected",
    [
        (["cluster=local", "workers=2"], ["cluster.kind=local", "cluster.workers=2"]),
        (["cluster.kind=slurm", "store.path=x"], ["cluster.kind=slurm", "store.path=x"]),
        (["workers = 3", "run.limit=2"], ["cluster.workers= 3", "run.limit=2"]),
        (["cluster"], ["cluster"]),  # not an override: left for the config loader to report
    ],
)
def test_expand_shorthand(given: list[str], expected: list[str]) -> None:
    assert cluster.expand_shorthand(given) == expected


def test_shorthand_builds_the_cluster_section(videos: Path, tmp_path: Path) -> None:
    overrides = cluster.expand_shorthand([f"source={videos / 'labels.csv'}", "cluster=local", "workers=2"])
    cfg = load_config(ExtractConfig, None, overrides)
    assert (cfg.cluster.kind, cfg.cluster.workers) == ("local", 2)
    with pytest.raises(ConfigError, match="cluster.kind"):
        load_config(ExtractConfig, None, cluster.expand_shorthand([f"source={videos}", "cluster=lokal"]))


@pytest.mark.parametrize("gpus, cores, expected", [(0, 2, 1), (0, 16, 8), (4, 64, 4), (0, 1, 1)])
def test_default_workers(gpus: int, cores: int, expected: int) -> None:
    assert cluster.default_workers(gpus, cores) == expected


@pytest.mark.parametrize(
    "workers, parts, videos, expected",
    [
        (2, None, 100_000, 8),  # 4 per worker
        (2, None, 8, 2),  # tiny lists: one part per worker, not parts of one video
        (4, None, 100, 6),  # at least 16 videos per part
        (2, 5, 8, 5),  # cluster.parts wins
    ],
)
def test_default_parts(workers: int, parts: int | None, videos: int, expected: int) -> None:
    assert cluster.default_parts(workers, parts, videos) == expected


def test_plan_parts_is_the_part_split_and_skips_committed(videos: Path) -> None:
    from stages.extract.stage import select_part
    from stages.video import sources

    items, _ = sources.read_source(str(videos / "labels.csv"))
    plan = cluster.plan_parts(items, set(), 3)
    assert [n for _, numbers in plan for n in numbers] != [] and len(plan) == 3
    assert sorted(n for _, numbers in plan for n in numbers) == list(range(VIDEOS))
    for index, numbers in plan:
        assert numbers == select_part(items, f"{index}/3")[0]  # the same parts as --part I/3
    committed = {items[n].id for n in plan[0][1]}
    assert [i for i, _ in cluster.plan_parts(items, committed, 3)] == [1, 2]


@pytest.mark.parametrize(
    "parts, locks, problem",
    [
        (["p0000-of-0002"], {}, r"1 of 2 parts are missing: .*--part I/2.* 1/2"),
        ([], {}, "no '-of-NNNN' parts"),
        (
            ["p0000-of-0002", "p0001-of-0002"],
            {"p0001-of-0002": {"host": "elsewhere", "pid": 7}},
            "part p0001-of-0002 has a writer's LOCK .*another host",
        ),
        (
            ["p0000-of-0001"],
            {"p0000-of-0001": {"host": socket.gethostname(), "pid": os.getpid()}},
            "still running",
        ),
    ],
)
def test_commit_refuses(parts: list[str], locks: dict, problem: str) -> None:
    problems = commit.check_parts(parts, locks)
    assert any(re.search(problem, p) for p in problems), problems


def test_commit_accepts_a_full_split() -> None:
    assert commit.check_parts(["p0000-of-0002", "p0001-of-0002", "p0000-of-0001"], {}) == []


def test_jobqueue_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    cfg = load_config(ExtractConfig, "configs/cluster/slurm.yaml")
    with pytest.raises(cluster.ClusterError, match=r"pip install twostage\[cluster\]"):
        cluster._jobqueue_cluster(cfg.cluster)


def test_daemonic_worker_is_refused_with_advice(monkeypatch: pytest.MonkeyPatch, videos: Path) -> None:
    class Daemonic:
        daemon = True

    monkeypatch.setattr(cluster.mp, "current_process", lambda: Daemonic())
    cfg = load_config(ExtractConfig, None, [f"source={videos / 'labels.csv'}"])
    with pytest.raises(cluster.ClusterError, match="DASK_DISTRIBUTED__WORKER__DAEMON=False"):
        cluster.extract_part(cfg, 0, 1, False)


@pytest.mark.parametrize("name", ["local", "address", "slurm", "pbs"])
def test_example_configs_validate(name: str) -> None:
    cfg = load_config(ExtractConfig, f"configs/cluster/{name}.yaml")
    assert cfg.cluster.kind == name
    first = Path(f"configs/cluster/{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("#")
    if name in ("slurm", "pbs"):
        jq = pytest.importorskip("dask_jobqueue")
        cls = jq.SLURMCluster if name == "slurm" else jq.PBSCluster
        with cls(**cfg.cluster.jobqueue) as c:
            script = c.job_script()
        assert "--resources GPU=1" in script and "--nthreads 1" in script
        assert ("--gres=gpu:1" in script) if name == "slurm" else ("ngpus=1" in script)


# -- real clusters ----------------------------------------------------------------------------------
KILL_STORE, KILL_MARKER = "TWOSTAGE_TEST_KILL_STORE", "TWOSTAGE_TEST_KILL_MARKER"


class KillOnFirstCommit(WorkerPlugin):
    """The first worker to see a commit in the part it is extracting kills itself (os._exit, no cleanup)."""

    name = "kill-on-first-commit"

    def __init__(self, store: str, marker: str) -> None:
        self.store, self.marker = store, marker

    def transition(self, key: object, start: str, finish: str, **kwargs: object) -> None:
        if finish == "executing" and str(key).startswith(cluster.TASK_PREFIX):
            part = str(key)[len(cluster.TASK_PREFIX) :].rsplit("-", 1)[0]
            threading.Thread(target=self._kill_after_commit, args=(part,), daemon=True).start()

    def _kill_after_commit(self, part: str) -> None:
        import psutil

        log = Path(self.store) / layout.part_path(part) / layout.COMMITS_FILE
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if log.exists() and log.read_bytes().count(b"\n") >= 1:
                try:
                    fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only the first kill
                except FileExistsError:
                    return
                children = [p.pid for p in psutil.Process().children(recursive=True)]
                os.write(fd, json.dumps({"part": part, "children": children}).encode())
                os.close(fd)
                os._exit(1)
            time.sleep(0.01)


def still_alive(pids: list[int], within_s: float) -> list[str]:
    """The processes of ``pids`` still running after ``within_s`` seconds (zombies count as gone)."""
    import psutil

    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(p.cmdline())[:80]}")
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


async def dask_setup(worker: object) -> None:
    """Dask worker preload (``distributed.worker.preload``): installs the fault when a test asks for it."""
    if os.environ.get(KILL_MARKER):
        await worker.plugin_add(KillOnFirstCommit(os.environ[KILL_STORE], os.environ[KILL_MARKER]))


def test_local_cluster_with_a_killed_worker_equals_single_process(
    videos: Path,
    tmp_path: Path,
    reference: dict,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`twostage extract CONFIG cluster=local workers=2`, one worker killed after its part's first commit:
    every video committed exactly once, the same features per id as one process, parts disjoint."""
    import dask

    from pipeline.commands.extract import main

    store, marker = tmp_path / "local.zarr", tmp_path / "killed.json"
    monkeypatch.setenv(KILL_STORE, str(store))
    monkeypatch.setenv(KILL_MARKER, str(marker))
    try:
        with dask.config.set({"distributed.worker.preload": [__name__]}):
            assert (
                main(
                    [
                        str(write_config(tmp_path, videos, store)),
                        "cluster=local",
                        "workers=2",
                        "cluster.parts=2",
                    ]
                )
                == 0
            )
        orphans = still_alive(json.loads(marker.read_text())["children"], within_s=15.0)
    finally:
        for pid in json.loads(marker.read_text())["children"] if marker.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # clean up after a failure of the check below
    assert not orphans, f"the killed worker's fork server / decode processes outlived it: {orphans}"
    out = capsys.readouterr().out
    assert "dask dashboard:" in out and "on 2 workers" in out
    assert marker.exists(), "no worker was killed: the test did not test a fault"
    assert json.loads(marker.read_text())["part"] in FeatureStore(store).parts()
    assert_complete_once(store)
    assert_parts_disjoint(store)
    assert sorted(FeatureStore(store).parts()) == ["p0000-of-0002", "p0001-of-0002"]
    assert_same_features(store, reference)


@pytest.mark.slow
def test_existing_cluster_by_address_equals_single_process(
    videos: Path, tmp_path: Path, reference: dict
) -> None:
    import dask
    from distributed import LocalCluster

    store = tmp_path / "address.zarr"
    with (
        dask.config.set(cluster.NO_DAEMON),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c,
    ):
        cfg = load_config(
            ExtractConfig,
            write_config(tmp_path, videos, store),
            ["cluster.kind=address", f"cluster.address={c.scheduler_address}"],
        )
        assert cluster.run_cluster(cfg) == 0
    assert len(FeatureStore(store).parts()) == 2  # 8 videos: one part per worker
    assert_complete_once(store)
    assert_parts_disjoint(store)
    assert_same_features(store, reference)


@pytest.mark.slow
def test_killed_driver_resumes_with_the_same_command(videos: Path, tmp_path: Path, reference: dict) -> None:
    """SIGKILL the driver after the first commit; the same command again completes the store, once each."""
    import subprocess
    import sys

    import psutil

    from pipeline.commands.extract import main

    store = tmp_path / "driver.zarr"
    command = [str(write_config(tmp_path, videos, store)), "cluster=local", "workers=2", "cluster.parts=2"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "stages.extract", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    descendants: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not (store / layout.PARTS_GROUP).is_dir() or not commit_lines(store):
            assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before a commit"
            time.sleep(0.05)
        descendants = [c.pid for c in psutil.Process(driver.pid).children(recursive=True)]
    finally:
        driver.kill()
        driver.wait()
        for pid in descendants:  # its workers exit with it; their decode processes may not
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert driver.returncode == -signal.SIGKILL
    assert main(command) == 0
    assert_complete_once(store)
    assert_parts_disjoint(store)
    assert_same_features(store, reference)


def test_part_runs_then_commit_equal_one_run(
    videos: Path, tmp_path: Path, reference: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.commands.extract import main

    store = tmp_path / "parts.zarr"
    config = str(write_config(tmp_path, videos, store))
    assert main([config, "--part", "1/2"]) == 0
    assert commit.main([str(store)]) == 1  # part 0/2 is missing
    assert "1 of 2 parts are missing" in capsys.readouterr().out
    assert not FeatureStore(store).complete
    assert main([config, "--part", "0/2"]) == 0
    assert commit.main([str(store)]) == 0
    assert f"{VIDEOS} videos" in capsys.readouterr().out
    assert_complete_once(store)
    assert_parts_disjoint(store)
    assert_same_features(store, reference)
