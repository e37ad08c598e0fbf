"""Stage one's engine: decode processes -> packed device batches -> background store writer.

    source list ──► N decode processes ──(bounded queue of frame chunks)──► packer ──► backbone
                    (sample, decode, preprocess)                            (batches frames from
                                                                              many videos)
    backbone ──(pool/quantise on device, copy back)──► per-video assembly ──► writer thread ──► store part

The three stages overlap: decoding runs in other processes, the device loop runs here, and zarr
compression and writes run in a thread (blosc and file I/O release the GIL).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stages.core.errors import TwostageError
from stages.extract.worker import DecodeJob, worker_main
from stages.models import Backbone, TensorRequest
from stages.video import sources
from store import PartWriter, VideoEntry, ViewSpec, codecs


def _context() -> Any:
    """Fork-server processes: forking after torch started threads is unsafe, and spawning re-imports torch
    per worker (seconds); the server imports the worker module once and forks clean children from it."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["stages.extract.forkserver_preload", "stages.extract.worker"])
    return ctx


class ExtractionError(TwostageError, RuntimeError):
    """Raised with ``--fail-fast`` on the first bad video, or when the writer itself fails."""


@dataclass
class Stats:
    """Counters and busy times of each component, for the progress bar and the final summary."""

    scheduled: int = 0
    skipped: int = 0  # videos of this run's list already committed before it started
    committed: int = 0
    failed: int = 0
    frames: int = 0
    decode_s: float = 0.0
    model_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)  # frames per device batch, in order


@dataclass
class _Video:
    """One video whose rows stream to the part writer: nothing of its features is held here."""

    id: str
    missing: int  # rows still without features
    done: bool = False  # its worker has sent every chunk


def decode_tasks(items: list[sources.VideoItem], numbers: list[int]) -> list[int | list[int]]:
    """The decode workers' tasks: a video number, or the numbers of the segments of one file (same
    ``meta["group"]``: the file is opened once for all of them), in the order of ``numbers``."""
    tasks: list[int | list[int]] = []
    groups: dict[str, list[int]] = {}
    for n in numbers:
        group = items[n].meta.get("group")
        if group is None:
            tasks.append(n)
        elif group in groups:
            groups[group].append(n)
        else:
            groups[group] = [n]
            tasks.append(groups[group])  # type: ignore[arg-type]
    return [t[0] if isinstance(t, list) and len(t) == 1 else t for t in tasks]


class Extractor:
    """Runs one part: ``Extractor(...).run(items, numbers)``; each item is committed or recorded failed."""

    def __init__(
        self,
        backbone: Backbone,
        requests: list[TensorRequest],
        job: DecodeJob,
        writer: PartWriter,
        *,
        classes: list[str],
        workers: int,
        batch_frames: int,
        quantise: bool,
        fail_fast: bool = False,
        progress: Any = None,
        video_timeout_s: float = 600.0,
        bf16: bool = True,
        fp16: bool = False,
    ) -> None:
        self.video_timeout_s, self.bf16, self.fp16 = video_timeout_s, bf16, fp16
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.backbone, self.requests, self.job, self.writer = backbone, requests, job, writer
        self.workers, self.batch_frames, self.quantise = max(1, workers), batch_frames, quantise
        self.fail_fast, self.progress = fail_fast, progress
        self.device = backbone.device
        self.shapes = backbone.output_shapes(requests)
        self.stats = Stats()

    # -- orchestration ------------------------------------------------------------------------------
    def run(self, items: list[sources.VideoItem], numbers: list[int]) -> Stats:
        t0 = time.perf_counter()
        self.items, self.stats.scheduled = items, len(numbers)
        self._videos: dict[int, _Video] = {}
        self._dead: set[int] = set()
        self._pieces: deque[tuple[Any, ...]] = deque()
        self._resolved = 0
        ctx = _context()
        self._tasks, self._results = ctx.Queue(), ctx.Queue(maxsize=self._queue_size())
        self._decoded = 0  # videos whose worker is finished with them (done or failed)
        tasks = decode_tasks(items, numbers)
        for task in tasks:
            self._tasks.put(task)
        procs = [self._spawn(ctx) for _ in range(min(self.workers, max(1, len(tasks))))]
        for _ in procs:
            self._tasks.put(None)
        self._write_q: queue.Queue[Any] = queue.Queue(maxsize=16)
        self._write_error: BaseException | None = None
        writer_thread = threading.Thread(target=self._write_loop, daemon=True)
        writer_thread.start()
        try:
            self._loop(ctx, procs)
        finally:
            self._write_q.put(None)
            writer_thread.join()
            for p, _, _ in procs:
                p.join(timeout=5) if self._resolved >= self.stats.scheduled else p.kill()
        if self._write_error is not None:
            raise ExtractionError(f"writing to the store failed: {self._write_error}") from self._write_error
        self.stats.wall_s = time.perf_counter() - t0
        return self.stats

    def _queue_size(self) -> int:
        """Messages in flight: room for two device batches of frame chunks, plus info/done messages.
        A bound in messages rather than frames starved the device of full batches (benchmarks/extract.py)."""
        s = self.job.sampling
        chunk = max(1, min(self.job.chunk, s.frames if s.mode == "clips" else self.job.chunk))
        return 4 * self.workers + 3 * -(-2 * self.batch_frames // chunk)

    def _spawn(self, ctx: Any) -> tuple[Any, Any, Any]:
        slot, started = ctx.Value("l", -1), ctx.Value("d", 0.0)
        self._spawned = getattr(self, "_spawned", 0) + 1
        proc = ctx.Process(
            target=worker_main,
            name=f"decode-{self._spawned - 1}",  # log lines say which decode worker: [worker decode-2]
            daemon=True,
            args=(self.job, self.items, self._tasks, self._results, slot, started, os.getpid()),
        )
        proc.start()
        return proc, slot, started

    def _loop(self, ctx: Any, procs: list[tuple[Any, Any, Any]]) -> None:
        while self._resolved < self.stats.scheduled:
            if self._write_error is not None:
                return
            try:
                msg = self._results.get(timeout=0.05)
            except queue.Empty:
                if self._pieces and (self.stats.batches or self._decoded >= self.stats.scheduled):
                    self._run_batch()  # the workers are slower than the device: do not wait for a full batch
                self._check_workers(ctx, procs)
                continue
            self._handle(msg)
            while sum(len(p[4]) for p in self._pieces) >= self.batch_frames:
                self._run_batch()
        while self._pieces:
            self._run_batch()

    def _check_workers(self, ctx: Any, procs: list[tuple[Any, Any, Any]]) -> None:
        """Replace a worker that crashed (a decoder segfault) or hangs on one video past the timeout."""
        for i, (proc, slot, started) in enumerate(procs):
            number = slot.value
            hung = (
                number >= 0 and proc.exitcode is None and time.time() - started.value > self.video_timeout_s
            )
            if hung:
                proc.kill()
                proc.join()
            elif proc.exitcode is None or proc.exitcode == 0:
                continue
            if number >= 0 and number not in self._dead:
                why = (
                    f"no result after {self.video_timeout_s:.0f} s (decoder hang; run.video_timeout_s)"
                    if hung
                    else f"the decoder process died (exit code {proc.exitcode})"
                )
                self._fail(number, "decode", why)
            procs[i] = self._spawn(ctx)  # a replacement worker picks up the remaining tasks
            self._tasks.put(None)

    # -- messages -----------------------------------------------------------------------------------
    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind, number = msg[0], msg[1]
        if number in self._dead:
            return
        if kind == "fail":
            self._fail(number, msg[2], msg[3])
        elif kind == "info":
            self._begin(number, msg[2])
        elif kind == "frames":
            _, _, view, row0, frames, times, idx, padded, seconds = msg
            self.stats.decode_s += seconds
            self._pieces.append((number, view, row0, 0, frames, (times, idx, padded)))
        elif kind == "done":
            self._decoded += 1
            self._videos[number].done = True
            self._maybe_commit(number)

    def _begin(self, number: int, info: dict[str, Any]) -> None:
        """Reserve the video's rows in the part: its features go there as the device produces them."""
        item = self.items[number]
        label = self.class_index.get(item.label, -1) if item.label is not None else -1
        entry = VideoEntry(
            id=item.id,
            label=label,
            source=item.path,
            fps=float(info["fps"]),
            num_frames=int(info["num_frames"]),
            meta={"label_name": item.label, "backend": info.get("backend"), **item.meta},
        )
        specs = [ViewSpec(v["view"], v["rows"], v["meta"]) for v in info["views"]]
        self._write_q.put(("begin", entry, specs))
        self._videos[number] = _Video(item.id, missing=sum(v["rows"] for v in info["views"]))

    def _fail(self, number: int, stage: str, error: str) -> None:
        item = self.items[number]
        self._dead.add(number)
        self._decoded += 1
        if self._videos.pop(number, None) is not None:
            self._write_q.put(("abandon", item.id))
        self._pieces = deque(p for p in self._pieces if p[0] != number)
        self.stats.failed += 1
        self.stats.failures.append({"id": item.id, "path": item.path, "stage": stage, "error": error})
        self._write_q.put(("fail", item, stage, error))
        self._resolved += 1
        self._tick()
        if self.fail_fast:
            raise ExtractionError(f"video {item.id!r} ({item.path}) failed at {stage}: {error}")

    # -- device -------------------------------------------------------------------------------------
    def _run_batch(self) -> None:
        frames, owners, room = [], [], self.batch_frames
        while self._pieces and room > 0:
            number, view, row0, offset, x, meta = self._pieces.popleft()
            take = min(room, len(x) - offset)
            frames.append(x[offset : offset + take])
            owners.append((number, view, row0 + offset, take, [m[offset : offset + take] for m in meta]))
            if offset + take < len(x):
                self._pieces.appendleft((number, view, row0, offset + take, x, meta))
            room -= take
        t0 = time.perf_counter()
        batch = torch.from_numpy(np.concatenate(frames))  # [B, 3, S, S] float16
        self.stats.batches.append(len(batch))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():  # frozen features: no autograd bookkeeping at all
            outputs = self.backbone.forward_tensors(
                batch.to(self.device).float(), self.requests, bf16=self.bf16, fp16=self.fp16
            )
        host = {name: self._to_host(y) for name, y in outputs.items()}
        self.stats.model_s += time.perf_counter() - t0
        start = 0
        for number, view, row0, n, (times, idx, padded) in owners:
            video = self._videos[number]
            cut = slice(start, start + n)
            rows = {name: (v[0][cut], v[1][cut]) if self.quantise else v[cut] for name, v in host.items()}
            self._write_q.put(("put", video.id, view, row0, rows, times, idx, padded))
            video.missing -= n
            start += n
            self.stats.frames += n
            self._maybe_commit(number)

    def _to_host(self, y: torch.Tensor) -> Any:
        if self.quantise:  # quantise on the device: a quarter of the bytes cross the bus
            q, scale = codecs.quantise_int8(y)
            return q.cpu().numpy(), scale.cpu().numpy()
        return y.to(torch.float16).cpu().numpy()

    # -- writing ------------------------------------------------------------------------------------
    def _maybe_commit(self, number: int) -> None:
        video = self._videos.get(number)
        if video is None or not video.done or video.missing > 0:
            return
        del self._videos[number]
        self._write_q.put(("end", video.id))
        self.stats.committed += 1
        self._resolved += 1
        self._tick()

    def _write_loop(self) -> None:
        while (msg := self._write_q.get()) is not None:
            if self._write_error is not None:
                continue
            t0 = time.perf_counter()
            try:
                kind, *args = msg
                if kind == "begin":
                    self.writer.begin(*args)
                elif kind == "put":
                    self.writer.put(*args)
                elif kind == "end":
                    self.writer.end(*args)
                elif kind == "abandon":
                    self.writer.abandon(*args)
                else:
                    item, stage, error = args
                    self.writer.fail(item.id, item.path, stage, error)
            except BaseException as e:  # noqa: BLE001 - surfaced in the main thread
                self._write_error = e
            self.stats.write_s += time.perf_counter() - t0

    def _tick(self) -> None:
        if self.progress is None:
            return
        elapsed = max(1e-9, self.progress.format_dict.get("elapsed", 0.0) or 1e-9)
        self.progress.update(1)
        self.progress.set_postfix(
            frames_s=f"{self.stats.frames / elapsed:.1f}", failed=self.stats.failed, refresh=False
        )
