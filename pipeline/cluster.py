"""Stage one on a dask cluster: ``twostage extract CONFIG cluster=local workers=2``.

    driver ─► store (created once, here) ─► split the videos into parts ─► one task per part ─► wait
              │                                                                               │
              └── one progress bar: polls the store's commit logs every second ◄──────────────┘
                  then finalize (index + complete flag) and print the summary
    task (on a worker) ─► run_extract(cfg, part="p0003-of-0008"): its own PartWriter, its own decode processes

Parts are the ``--part I/N`` job-array parts (round-robin over the sorted ids) and are named
``p{I:04d}-of-{N:04d}``, so writers never share a shard and a rerun of the same command finds the same
parts. Durable progress lives in the store, never in dask: a task skips committed videos, a task whose
worker died is run again (dask reschedules it; ``cluster.retries`` covers exceptions) and takes over its
part's LOCK, and a killed driver is resumed by running the same command again.

Decode processes inside dask workers: nanny-started workers are daemonic by default, and daemonic
processes cannot have children. The local cluster (and jobqueue workers, through their job script) run
with ``distributed.worker.daemon: False``; workers of an existing cluster must be started with
``DASK_DISTRIBUTED__WORKER__DAEMON=False`` (or ``--no-nanny``), else each task fails with that advice.

Example:
    >>> from stages.core.config import load_config                                        # doctest: +SKIP
    >>> cfg = load_config(ExtractConfig, "configs/cluster/local.yaml", ["cluster.workers=2"])
    >>> run_cluster(cfg)  # exit status: 0 when every part finished within the failure budget
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.core.errors import ConfigError, TwostageError
from store import layout

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # dask and stage one are imported only when a cluster run is asked for
    from distributed import Client, Future

    from stages.extract.config import ClusterConfig, ExtractConfig

SHORTHAND = {"cluster": "cluster.kind", "workers": "cluster.workers"}  # `cluster=local workers=2`
TASK_PREFIX = "extract-"  # task keys: extract-<part>-<run id>
NO_DAEMON = {"distributed.worker.daemon": False}  # decode processes are children of the worker process
POLL_S = 1.0  # progress refresh period; each poll reads the parts' commit logs
MIN_PART_VIDEOS = 16  # default split: smaller parts cost more to start than they save at the end
LOCK_WAIT_S = 30.0  # a retried task waits this long for a dying writer on its host to let go of the part


class ClusterError(TwostageError, RuntimeError):
    """A cluster cannot be made or used as configured."""


def expand_shorthand(overrides: Sequence[str]) -> list[str]:
    """``cluster=local`` -> ``cluster.kind=local``, ``workers=2`` -> ``cluster.workers=2``; others kept."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"{SHORTHAND[key.strip()]}={value}" if sep and key.strip() in SHORTHAND else item)
    return out


def default_workers(gpus: int, cores: int) -> int:
    """One worker per GPU; without GPUs one per two cores (each worker also runs decode processes)."""
    return gpus if gpus > 0 else max(1, cores // 2)


def default_parts(workers: int, parts: int | None, videos: int) -> int:
    """``cluster.parts``, else 4 per worker (a slow part does not leave the others idle at the end), but
    only as many as keep ``MIN_PART_VIDEOS`` videos per part (each part pays ~0.5 s to start its decoders
    and writer), and never fewer than the workers. It depends on the whole list, not on what is left to
    do, so a rerun of the same command finds the same parts."""
    if parts:
        return parts
    workers = max(1, workers)
    return max(workers, min(4 * workers, videos // MIN_PART_VIDEOS))


# -- making the client ------------------------------------------------------------------------------
@contextlib.contextmanager
def make_client(cc: ClusterConfig) -> Iterator[tuple[Client, int]]:
    """The client of the configured cluster, and how many GPUs each task should hold (0 or 1)."""
    from distributed import Client

    with contextlib.ExitStack() as stack:
        if cc.kind == "local":
            import dask

            stack.enter_context(dask.config.set(NO_DAEMON))  # read again by the nanny at every worker restart
            cluster, gpus = _local_cluster(cc)
        elif cc.kind == "address":
            if not cc.address:
                raise ConfigError(
                    "cluster.address is required with cluster.kind=address "
                    "(e.g. cluster.address=tcp://scheduler:8786)"
                )
            cluster, gpus = cc.address, 0
        elif cc.kind in ("slurm", "pbs"):
            cluster, gpus = _jobqueue_cluster(cc), 0
        else:
            raise ConfigError(f"cluster.kind: {cc.kind!r}; expected local, address, slurm or pbs")
        if not isinstance(cluster, str):
            stack.callback(cluster.close)
        client = stack.enter_context(Client(cluster))
        if cc.kind != "local":  # tasks hold a GPU when the workers advertise one (--resources GPU=1)
            gpus = int(any(w.get("resources", {}).get("GPU") for w in _wait_for_workers(client)))
        yield client, gpus


def _local_cluster(cc: ClusterConfig) -> tuple[Any, int]:
    from distributed import LocalCluster

    gpus = _gpu_count()
    n = cc.workers or default_workers(gpus, _cores())
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,  # one task per process
        resources={"GPU": 1} if gpus else None,
    )
    return cluster, int(gpus > 0)


def _jobqueue_cluster(cc: ClusterConfig) -> Any:
    try:
        import dask_jobqueue
    except ImportError:
        raise ClusterError(
            f"cluster.kind={cc.kind} needs dask-jobqueue: pip install twostage[cluster] "
            "(or pip install dask-jobqueue)"
        ) from None
    if not cc.workers:
        raise ConfigError(
            f"cluster.workers is required with cluster.kind={cc.kind}: the number of worker "
            "processes to start (jobs x jobqueue.processes)"
        )
    kwargs = dict(cc.jobqueue)
    prologue = list(kwargs.pop("job_script_prologue", []))  # type: ignore[arg-type]
    kwargs["job_script_prologue"] = [*prologue, "export DASK_DISTRIBUTED__WORKER__DAEMON=False"]
    cls = dask_jobqueue.SLURMCluster if cc.kind == "slurm" else dask_jobqueue.PBSCluster
    try:
        cluster = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(
            f"cluster.jobqueue: {e} (the keys are {cls.__name__} arguments; see "
            "configs/cluster/ and the dask-jobqueue docs)"
        ) from None
    cluster.scale(n=cc.workers)
    return cluster


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _workers(client: Client) -> list[dict[str, Any]]:
    return list(client.scheduler_info(n_workers=-1)["workers"].values())


def dashboard_line(client: Client, local: bool) -> str:
    """The line printed at start; a local scheduler serves no dashboard without bokeh."""
    import importlib.util

    link = client.dashboard_link
    if local and importlib.util.find_spec("bokeh") is None:
        return f"dask dashboard: not served (pip install 'bokeh>=3.1' to see it at {link})"
    return f"dask dashboard: {link}"


# -- the driver -------------------------------------------------------------------------------------
def run_cluster(cfg: ExtractConfig) -> int:
    """Extract ``cfg.source`` on the configured dask cluster; returns the exit status (0 = success)."""
    from stages.video import sources
    from store import set_complete

    t0 = time.perf_counter()
    items, classes = sources.read_source(cfg.source, classes=cfg.classes)
    committed = prepare_store(cfg, classes)
    with make_client(cfg.cluster) as (client, gpus):
        print(dashboard_line(client, cfg.cluster.kind == "local"), flush=True)
        workers = cfg.cluster.workers if cfg.cluster.kind in ("slurm", "pbs") else len(_workers(client))
        count = default_parts(workers or 1, cfg.cluster.parts, len(items))
        plan = plan_parts(items, committed, count)
        todo = sum(len(n) for _, n in plan)
        print(
            f"{todo} videos to extract ({len(items) - todo} already committed) in {len(plan)} of {count} "
            f"parts on {workers} workers{', one GPU per task' if gpus else ''}",
            flush=True,
        )
        if todo:
            set_complete(cfg.store.path, None)
        base = store_counts(cfg.store.path)
        futures = submit_parts(client, cfg, plan, count, gpus)
        watch(futures, cfg.store.path, todo, base, cfg.run.progress)
        results, errors = collect(futures)
    done = store_counts(cfg.store.path)
    return finish(
        cfg,
        results,
        errors,
        scheduled=todo,
        committed=done[0] - base[0],
        skipped=len(items) - todo,
        wall_s=time.perf_counter() - t0,
    )


def prepare_store(cfg: ExtractConfig, classes: list[str]) -> set[str]:
    """Create (or check) the store on the driver, before any task opens it; the committed ids."""
    from stages.extract import stage

    stage.prepare_store(cfg, classes, device="cpu")  # the driver only needs the spec: CPU is enough
    return _committed_ids(cfg.store.path)


def _committed_ids(path: str) -> set[str]:
    from store import FeatureStore

    return {v.id for v in FeatureStore(path).videos}


def _wait_for_workers(client: Client) -> list[dict[str, Any]]:
    if not _workers(client):
        logger.info("waiting for the cluster's first worker (batch jobs may queue) ...")
        client.wait_for_workers(1)
    return _workers(client)


def plan_parts(items: Sequence[Any], committed: set[str], count: int) -> list[tuple[int, list[int]]]:
    """``(part index, item numbers still to extract)`` of every part of the ``count``-way split with work.

    The split is ``stages.extract.stage.split_parts`` (as ``--part I/N``), so cluster parts and
    ``--part I/N`` parts are the same parts and a rerun with the same ``count`` resumes each part.
    """
    from stages.extract.stage import split_parts

    parts = [[n for n in numbers if items[n].id not in committed] for numbers in split_parts(items, count)]
    return [(index, numbers) for index, numbers in enumerate(parts) if numbers]


def submit_parts(
    client: Client, cfg: ExtractConfig, plan: list[tuple[int, list[int]]], count: int, gpus: int
) -> list[Future]:
    """One task per part: retried on exceptions, one GPU held per task when the workers have GPUs."""
    run_id = uuid.uuid4().hex[:8]  # a fresh key per driver run: a rerun never reuses a finished result
    return [
        client.submit(
            extract_part,
            cfg,
            index,
            count,
            bool(gpus),
            pure=False,
            key=f"{TASK_PREFIX}{layout.part_name(index, count)}-{run_id}",
            retries=cfg.cluster.retries,
            resources={"GPU": 1} if gpus else None,
        )
        for index, _ in plan
    ]


# -- the task ---------------------------------------------------------------------------------------
def extract_part(cfg: ExtractConfig, index: int, count: int, gpu: bool) -> dict[str, Any]:
    """The task: extract part ``index`` of ``count`` on this worker; its ``Stats`` as a dict."""
    from stages.core import log
    from stages.extract.stage import run_extract

    log.setup_child()  # a dask worker did not run our CLI: log as the driver does, as [worker NAME]
    if mp.current_process().daemon:
        raise ClusterError(
            "this dask worker is a daemonic process and cannot start decode processes: "
            "start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False "
            "(or `dask worker --no-nanny`)"
        )
    part = layout.part_name(index, count)
    task_cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, part=f"{index}/{count}", progress=False),  # not the coordinator
        store=dataclasses.replace(cfg.store, overwrite=False),  # the driver made the store
        backbone=dataclasses.replace(cfg.backbone, device=_task_device(cfg.backbone.device, gpu)),
        cluster=dataclasses.replace(cfg.cluster, kind="none"),
    )
    _wait_for_local_writer(cfg.store.path, part)
    stats = run_extract(task_cfg, part=part, steal_lock=_lock_orphaned(cfg.store.path, part))
    return dataclasses.asdict(stats) | {"part": part}


def _task_device(device: str, gpu: bool) -> str:
    """With several GPUs visible to a local worker, worker ``i`` takes GPU ``i`` (one task, one GPU)."""
    if not gpu or device != "auto":
        return device
    import torch
    from distributed import get_worker

    name, n = get_worker().name, torch.cuda.device_count()
    return f"cuda:{name % n}" if isinstance(name, int) and n > 1 else "cuda"


def _wait_for_local_writer(path: str, part: str) -> None:
    """A retried task may start before the killed attempt's process on this host is gone: wait for it."""
    from store.locks import local_writer_alive, read_lock

    deadline = time.monotonic() + LOCK_WAIT_S
    while time.monotonic() < deadline:
        owner = read_lock(path, part)
        if not owner or owner.get("pid") == os.getpid() or not local_writer_alive(owner):
            return
        time.sleep(0.5)


def _lock_orphaned(path: str, part: str) -> bool:
    """Whether the part's LOCK is held by a writer on another host that is no longer a worker here.

    A local LOCK is never stolen: ``PartWriter`` takes over a dead local writer's LOCK by itself and
    refuses a live one.
    """
    from store.locks import read_lock

    owner = read_lock(path, part)
    if not owner or owner.get("host") == socket.gethostname():
        return False
    from distributed import get_client

    live = get_client().run(_whoami)
    return (owner.get("host"), owner.get("pid")) not in {tuple(v) for v in live.values()}


def _whoami() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


# -- progress and results ---------------------------------------------------------------------------
def store_counts(path: str) -> tuple[int, int, int]:
    """Committed videos, failed videos and committed frames, from the store's logs."""
    from store import FeatureStore

    fs = FeatureStore(path)
    return len(fs.videos), len(fs.failures), sum(n for v in fs.videos for _, n in v.views.values())


def watch(futures: list[Future], path: str, total: int, base: tuple[int, int, int], enabled: bool) -> None:
    """Wait for every task; one progress bar for all workers, fed by the store's commit logs."""
    from distributed import wait

    bar = None
    if enabled:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="video", dynamic_ncols=True, file=sys.stderr)
    t0, finished = time.monotonic(), False
    while not finished:
        try:
            wait(futures, timeout=POLL_S)
            finished = True
        except TimeoutError:
            pass
        if bar is not None:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a part group being created is half-written: next poll
                now = store_counts(path)
                done, failed, frames = now[0] - base[0], now[1] - base[1], now[2] - base[2]
                bar.update(min(total, done + max(0, failed)) - bar.n)
                rate = frames / max(1e-9, time.monotonic() - t0)
                bar.set_postfix(frames_s=f"{rate:.1f}", failed=max(0, failed))
    if bar is not None:
        bar.close()


def collect(futures: list[Future]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The finished tasks' stats, and ``(part, error)`` for every task that failed past its retries."""
    results, errors = [], []
    for f in futures:
        part = str(f.key)[len(TASK_PREFIX) :].rsplit("-", 1)[0]
        if f.status == "finished":
            results.append(f.result())
        else:
            error = f.exception() if f.status == "error" else f.status
            errors.append((part, f"{type(error).__name__}: {error}"))
    return results, errors


def finish(
    cfg: ExtractConfig,
    results: list[dict[str, Any]],
    errors: list[tuple[str, str]],
    *,
    scheduled: int,
    committed: int,
    skipped: int,
    wall_s: float,
) -> int:
    """Finalize the store when every part finished, print the summary, write the metrics; exit status."""
    from pipeline.report import failure_exit, print_summary
    from stages.core.config import to_dict
    from stages.extract.runner import Stats
    from stages.extract.stage import summary
    from store import finalize

    stats = Stats(
        scheduled=scheduled,
        committed=committed,
        skipped=skipped,
        wall_s=wall_s,
        failures=[f for r in results for f in r["failures"]],
    )
    for r in results:
        for name in ("failed", "frames", "decode_s", "model_s", "write_s"):
            setattr(stats, name, getattr(stats, name) + r[name])
    s = summary(stats) | {"parts": len(results), "failed_parts": [p for p, _ in errors]}
    print_summary(s, cfg.store.path)
    metrics = Path(f"{cfg.store.path.rstrip('/')}.extract.json")
    metrics.write_text(json.dumps(s | {"config": to_dict(cfg)}, indent=2, default=str))
    if errors:
        for part, error in errors:
            print(
                f"error: part {part} failed after {cfg.cluster.retries} retries: "
                f"{error.splitlines()[0][:300]}",
                file=sys.stderr,
            )
        print(
            "error: the store is not complete. Run the same command again: committed videos are kept and "
            "each part resumes where it stopped.",
            file=sys.stderr,
        )
        return 1
    finalize(
        cfg.store.path,
        {"frames_per_s": s["frames_per_s"], "parts": len(results), "cluster": cfg.cluster.kind},
    )
    return failure_exit(s, cfg.run.max_failure_fraction, metrics)
