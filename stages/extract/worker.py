"""Decode worker processes: video -> sampled, preprocessed frames, streamed in bounded chunks.

Each worker takes video numbers from a task queue and sends messages on a bounded result queue
(the bound is the back-pressure that keeps memory flat whatever the video length):

    ("info",   item, {"num_frames", "fps", "views": [{"view", "rows", "meta"}], "backend"})
    ("frames", item, view, row0, frames [n,3,S,S] float16, time_s [n], frame_index [n], padded [n], seconds)
    ("done",   item)
    ("fail",   item, stage, message)

A worker writes the item it is on into a shared slot, so the parent can blame the right video when a
decoder crashes the whole process (a segfault cannot be caught in-process).
"""

from __future__ import annotations

import queue
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.core import log
from stages.extract.lifeline import die_with_parent
from stages.video import decode, sources
from stages.video.preprocess import Preprocessing
from stages.video.sampling import Sampling, ViewPlan, plan_views
from store.locks import pid_alive


@dataclass(frozen=True)
class DecodeJob:
    """What a worker needs to turn one video into preprocessed frames (plain, picklable values)."""

    sampling: Sampling
    pre: Preprocessing
    decoder: str  # auto | decord | pyav
    chunk: int  # frames per message


def plan_item(job: DecodeJob, reader: Any, item: sources.VideoItem) -> tuple[list[ViewPlan], int]:
    """Views of one opened video (within its trim window), and the window's first source frame."""
    return plan_views(
        job.sampling, reader, size=job.pre.size, short_side=job.pre.short_side, video_key=item.id,
        start=item.start, end=item.end,
    )  # fmt: skip


def decode_video(job: DecodeJob, number: int, item: sources.VideoItem, send: Any, reader: Any = None) -> None:
    """Decode one video (from ``reader`` when the file is already open) and stream its views; a failure is
    raised with ``.stage`` naming where it failed."""
    progress = {"stage": "open"}
    try:
        if reader is not None:
            _decode_views(job, number, item, send, progress, reader)
            return
        with decode.open_video(sources.open_bytes(item), backend=job.decoder, name=item.path) as opened:
            _decode_views(job, number, item, send, progress, opened)
    except ParentGone:
        raise
    except Exception as e:
        e.stage = progress["stage"]  # type: ignore[attr-defined]
        raise


def _decode_views(
    job: DecodeJob, number: int, item: sources.VideoItem, send: Any, progress: dict, reader: Any
) -> None:
    progress["stage"] = "sample"
    plans, first = plan_item(job, reader, item)
    views = [
        {
            "view": p.view,
            "rows": len(p.frame_indices),
            "meta": {
                "temporal_pos": int(p.temporal_pos),
                "spatial_pos": int(p.spatial_pos),
                "crop": [float(c) for c in p.crop],
                "n_padded": int(np.sum(p.padded)),
            },
        }
        for p in plans
    ]
    send(
        (
            "info",
            number,
            {
                "num_frames": reader.info.num_frames,
                "fps": reader.info.fps,
                "views": views,
                "backend": reader.info.backend,
            },
        )
    )
    for p in plans:
        for row0 in range(0, len(p.frame_indices), job.chunk):
            progress["stage"] = "decode"
            t0 = time.perf_counter()
            idx = p.frame_indices[row0 : row0 + job.chunk] + first
            frames = reader.get_frames(idx.tolist())
            times = reader.timestamps(idx.tolist())
            progress["stage"] = "preprocess"
            x = job.pre(frames, p.crop)
            x = x.numpy().astype(np.float16)  # halves the bytes crossing the process boundary
            send(
                (
                    "frames",
                    number,
                    p.view,
                    row0,
                    x,
                    np.asarray(times, np.float64),
                    idx,
                    np.asarray(p.padded[row0 : row0 + job.chunk]),
                    time.perf_counter() - t0,
                )
            )
    send(("done", number))


class ParentGone(Exception):
    """The extraction process that started this worker is dead: stop instead of blocking forever."""


def _put(results: Any, parent: int) -> Any:
    def put(msg: tuple[Any, ...]) -> None:
        while True:
            try:
                return results.put(msg, timeout=2.0)
            except queue.Full:
                if not pid_alive(parent):
                    raise ParentGone from None

    return put


def _get(tasks: Any, parent: int) -> Any:
    while True:
        try:
            return tasks.get(timeout=2.0)
        except queue.Empty:
            if not pid_alive(parent):
                raise ParentGone from None


def worker_main(
    job: DecodeJob,
    items: list[sources.VideoItem],
    tasks: Any,
    results: Any,
    slot: Any,
    started: Any,
    parent: int,
) -> None:
    """Process entry point: decode tasks until the ``None`` sentinel, or until ``parent`` dies (a killed
    run must not leave decoders blocked on its queues); never raises per video."""
    import torch

    die_with_parent()  # the fork server is our parent: it dies with the extraction, and so do we
    log.setup_child()  # forkserver children inherit no logging: log as the command does
    torch.set_num_threads(1)  # one core per worker: parallelism comes from the number of workers
    send = _put(results, parent)
    while True:
        try:
            number = _get(tasks, parent)
        except ParentGone:
            results.cancel_join_thread()  # do not wait at exit to flush into a pipe nobody reads
            return
        if number is None:
            return
        try:
            run_task(job, items, number, send, slot, started)
        except ParentGone:
            results.cancel_join_thread()
            return
        slot.value = -1


def run_task(job: DecodeJob, items: list[sources.VideoItem], task: int | list[int], send: Any, slot: Any,
             started: Any) -> None:  # fmt: skip
    """One task: a video, or the segments of one file (a list: the file is opened and probed once for all
    of them). Each video's failure is reported as its own; only ``ParentGone`` is raised."""
    numbers = task if isinstance(task, list) else [task]
    shared = None
    try:
        if len(numbers) > 1:
            first = items[numbers[0]]
            shared = decode.open_video(sources.open_bytes(first), backend=job.decoder, name=first.path)
    except Exception as e:  # noqa: BLE001 - the file cannot be opened: every segment of it fails so
        for number in numbers:
            _report(send, number, "open", e)
        return
    try:
        for number in numbers:
            slot.value, started.value = number, time.time()
            try:
                decode_video(job, number, items[number], send, reader=shared)
            except ParentGone:
                raise
            except Exception as e:  # noqa: BLE001 - one bad video never stops the run
                _report(send, number, getattr(e, "stage", "decode"), e)
    finally:
        if shared is not None:
            shared.close()


def _report(send: Any, number: int, stage: str, e: BaseException) -> None:
    message = f"{type(e).__name__}: {e}"
    if not isinstance(e, decode.DecodeError):
        message += "\n" + traceback.format_exc(limit=3)
    send(("fail", number, stage, message))
