"""Stream-ordered chunks for memory heads (``memvit``): B streams, each walking videos chunk by chunk.

    units (a video, or with stream_by="source" the segments of one source file in time order)
      --chunks of T rows x stride, consecutive, one stored view--> a sequence per unit
    train ("cut", MeMViT's AVA loader): the epoch's shuffled units, concatenated, cut into S = B x world
      equal pieces; stream s reads piece s, one chunk per step; len = ceil(chunks / S) steps
    eval ("whole"): every unit whole in one stream (least-loaded stream first); len = the longest stream
      --StreamDataset[(epoch, step)]: one batched store read--> {"feats": {name: [B, T, ...]}, "label": [B],
        "video": [B], "reset": [B], "chunk": [B], "weight": [B]}

``reset`` marks a stream whose chunk starts a new unit (or the epoch, or a piece that starts mid-video):
the head zeroes that stream's memory. A stream past its end reads another stream's chunk with weight 0
(no loss, no metric; the batch keeps its B streams and its batch statistics). Labels are per video, so a
source streamed as segments (start/end times in the source list) gets one label per chunk.

Temporal jitter (train): per (seed, epoch, video), the chunk grid shifts back by o in [0, T x stride)
rows; the first chunk repeats row 0 where it starts before the video, the last o rows may fall off. The
chunk count stays ceil(rows / (T x stride)), so every epoch has the same number of steps.

Every choice is a pure function of (seed, epoch, stream, step): a run resumed mid-epoch reads the same
batches, and ``fit`` carries the head's memory (the step function's state) across the checkpoint.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from stages.core.errors import ConfigError, StoreCorruptError
from stages.train.data import INTEGRITY
from stages.train.loop import Step
from stages.train.runtime import to_device
from store import FeatureStore

STREAM_BY = ("video", "source")  # what one stream walks without a reset


def chunk_count(n_rows: int, frames: int, stride: int) -> int:
    """Chunks of ``frames`` rows ``stride`` apart that cover ``n_rows`` rows (a short video gives one)."""
    return max(1, math.ceil(n_rows / (frames * stride)))


def chunk_rows(n_rows: int, frames: int, stride: int, chunk: int, offset: int = 0) -> np.ndarray:
    """Rows of chunk ``chunk`` with the grid shifted back by ``offset`` rows, clamped to the view [T]."""
    start = chunk * frames * stride - offset
    return np.clip(start + np.arange(frames, dtype=np.int64) * stride, 0, n_rows - 1)  # [T]


def stream_units(store: FeatureStore, ids: Sequence[str], by: str) -> list[list[int]]:
    """Indices into ``ids`` streamed without a reset: each video alone, or each source's segments in time
    order (the time of their first stored frame)."""
    if by not in STREAM_BY:
        raise ConfigError(f"data.stream_by={by!r} is unknown; expected one of {list(STREAM_BY)}")
    if by == "video":
        return [[i] for i in range(len(ids))]
    groups: dict[str, list[tuple[float, str, int]]] = {}
    for i, vid in enumerate(ids):
        rec = store.video(vid)
        first = float(store.row_meta(vid, min(rec.views))["time_s"][0])
        groups.setdefault(rec.source, []).append((first, vid, i))
    return [[i for _, _, i in sorted(group)] for _, group in sorted(groups.items())]


class StreamPlan:
    """Which (unit, chunk of the unit) each of S streams reads at each step of an epoch, or None (ended).

    ``mode="cut"`` (training): the units in a seeded per-epoch order, concatenated and cut into S equal
    pieces; ``"whole"`` (evaluation): units in order, each whole in the least-loaded stream.
    """

    def __init__(self, counts: Sequence[int], streams: int, mode: str, seed: int = 0) -> None:
        if streams < 1 or mode not in ("cut", "whole"):
            raise ValueError(f"need streams >= 1 and mode 'cut' or 'whole', got {streams}, {mode!r}")
        self.counts, self.streams, self.mode, self.seed = np.asarray(counts, np.int64), streams, mode, seed
        self._epoch: tuple[int, Any] | None = None
        if mode == "cut":
            self.steps = -(-int(self.counts.sum()) // streams)
        else:
            self._lanes = self._assign()
            self.steps = max((sum(int(self.counts[u]) for u in lane) for lane in self._lanes), default=0)

    def _assign(self) -> list[list[int]]:
        lanes: list[list[int]] = [[] for _ in range(self.streams)]
        load = np.zeros(self.streams, np.int64)
        for u in range(len(self.counts)):
            s = int(np.argmin(load))  # ties: the lowest stream
            lanes[s].append(u)
            load[s] += self.counts[u]
        return lanes

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(units in this epoch's order, cumulative chunk counts), cached for the current epoch."""
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(len(self.counts), generator=g).numpy()
            self._epoch = (epoch, (order, np.cumsum(self.counts[order])))
        return self._epoch[1]

    def slot(self, epoch: int, step: int, stream: int) -> tuple[int, int, bool] | None:
        """(unit, chunk of the unit, reset) read by ``stream`` at ``step``, or None when it has ended."""
        if self.mode == "cut":
            order, cum = self._layout(epoch)
            pos = stream * self.steps + step
            if pos >= cum[-1]:
                return None
            k = int(np.searchsorted(cum, pos, side="right"))
            chunk = pos - (int(cum[k - 1]) if k else 0)
            return int(order[k]), chunk, step == 0 or chunk == 0
        for u in self._lanes[stream]:
            if step < self.counts[u]:
                return u, step, step == 0
            step -= int(self.counts[u])
        return None


class StreamDataset(Dataset):
    """Batches of consecutive chunks, one per stream, keyed ``(epoch, step)`` (see the module docstring).

    Args:
        store, ids: the store and the video ids of this split.
        frames, stride: T rows per chunk, ``stride`` stored rows apart.
        tensors: store tensor names to read (the head's ``inputs``).
        streams: B, streams of this process.
        mode: ``"train"`` (cut pieces, shuffled, jittered) or ``"eval"`` (whole videos, in order).
        jitter, seed: train jitter (see the module docstring) and the seed of every random choice.
        rank, world: DDP: train streams are split across processes, eval videos too.
        stream_by: ``"video"``, or ``"source"``: the segments of one source file form one stream unit.
        integrity: as :class:`stages.train.data.ClipDataset`: ``check`` stops on a damaged video, ``skip``
            reads its chunks with weight 0, ``off``.
    """

    def __init__(
        self, store: FeatureStore, ids: Sequence[str], frames: int, stride: int, tensors: Sequence[str], *,
        streams: int, mode: Literal["train", "eval"], jitter: bool = True, seed: int = 0, rank: int = 0,
        world: int = 1, stream_by: str = "video", integrity: str = "check",
    ) -> None:  # fmt: skip
        if integrity not in INTEGRITY or mode not in ("train", "eval"):
            raise ValueError(
                f"need integrity in {INTEGRITY} and mode train/eval, got {integrity!r}, {mode!r}"
            )
        self.store, self.ids, self.frames, self.stride = store, list(ids), frames, stride
        self.tensors, self.mode, self.seed, self.integrity = list(tensors), mode, seed, integrity
        self.jitter = jitter and mode == "train"
        for name in self.tensors:
            store.spec.tensor(name)  # StoreMismatchError naming what the store holds
        recs = [store.video(v) for v in self.ids]
        self.views = [min(r.views) for r in recs]  # the first stored view (dense stores hold one)
        self.rows = np.array([r.views[v][1] for r, v in zip(recs, self.views, strict=True)], np.int64)
        self.labels = np.array([r.label for r in recs], dtype=np.int64)
        self._keys = [zlib.crc32(v.encode()) for v in self.ids]
        self._chunks = np.array([chunk_count(n, frames, stride) for n in self.rows], np.int64)
        units = stream_units(store, self.ids, stream_by)
        if mode == "eval":
            units = units[rank::world]
        self.units = units
        counts = [int(self._chunks[u].sum()) for u in units]
        self.plan = StreamPlan(counts, streams * (world if mode == "train" else 1),
                               "cut" if mode == "train" else "whole", seed)  # fmt: skip
        self.first_stream = rank * streams if mode == "train" else 0
        self.streams, self._checked = streams, {}

    def __len__(self) -> int:
        return self.plan.steps

    def slots(self, epoch: int, step: int) -> list[tuple[int, int, bool] | None]:
        """(video number, chunk of the video, reset) of each of this process's streams, None when ended."""
        out = []
        for s in range(self.first_stream, self.first_stream + self.streams):
            where = self.plan.slot(epoch, step, s)
            if where is None:
                out.append(None)
                continue
            unit, k, reset = where
            for i in self.units[unit]:  # the unit's k-th chunk: which of its videos, which chunk of it
                if k < self._chunks[i]:
                    break
                k -= int(self._chunks[i])
            out.append((i, k, reset))
        return out

    def offset(self, epoch: int, i: int) -> int:
        """Train jitter: rows the chunk grid of video ``i`` shifts back in ``epoch``."""
        if not self.jitter:
            return 0
        rng = np.random.default_rng([self.seed, epoch, self._keys[i], 2])
        return int(rng.integers(self.frames * self.stride))

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, step = int(key[0]), int(key[1])
        slots = [s if s is not None and self._sound(s[0]) else None for s in self.slots(epoch, step)]
        real = [s for s in slots if s is not None]
        filler = real[0] if real else (0, 0, True)  # an ended stream reads a real chunk, with weight 0
        clips, meta = [], []
        for s in slots:
            i, k, reset = s if s is not None else filler
            rows = chunk_rows(int(self.rows[i]), self.frames, self.stride, k, self.offset(epoch, i))
            clips.append((self.ids[i], self.views[i], rows))
            meta.append((i if s is not None else -1, k, reset or s is None, float(s is not None)))
        feats = self.store.read_clips(clips, tensors=self.tensors, dtype=np.float16)  # {name: [B, T, ...]}
        video, chunk, reset, weight = (np.array(c) for c in zip(*meta, strict=True))
        label = np.where(video >= 0, self.labels[np.maximum(video, 0)], 0)
        return {"feats": feats, "label": label, "video": video, "reset": reset, "chunk": chunk,
                "weight": weight.astype(np.float32)}  # fmt: skip

    def _sound(self, i: int) -> bool:
        """Integrity on read, once per video and process (as ClipDataset): stop, or skip it (weight 0)."""
        if self.integrity == "off":
            return True
        if i not in self._checked:
            problems = self.store.check(self.ids[i], views=[self.views[i]], tensors=self.tensors)
            self._checked[i] = not problems
            if problems and self.integrity == "check":
                raise StoreCorruptError(
                    f"video {self.ids[i]!r} of {self.store.path} is damaged ({'; '.join(problems)}). Run "
                    f"`twostage verify {self.store.path}` for the full list and extract the damaged videos "
                    "again, or set data.integrity=skip to train without them."
                )
            if problems:
                warnings.warn(f"skipping damaged video {self.ids[i]!r}: {'; '.join(problems)}", stacklevel=2)
        return self._checked[i]


def collate_stream(batch: dict[str, Any]) -> dict[str, Any]:
    """A :class:`StreamDataset` batch as tensors."""
    return {
        "feats": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch["feats"].items()},
        "label": torch.as_tensor(batch["label"], dtype=torch.long),
        "video": torch.as_tensor(batch["video"], dtype=torch.long),
        "reset": torch.as_tensor(batch["reset"], dtype=torch.bool),
        "chunk": torch.as_tensor(batch["chunk"], dtype=torch.long),
        "weight": torch.as_tensor(batch["weight"], dtype=torch.float32),
    }


class _StepSampler(Sampler[tuple[int, int]]):
    def __init__(self, steps: int) -> None:
        self.steps, self.epoch, self.start = steps, 0, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, b) for b in range(self.start, self.steps)])

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class StreamLoader:
    """``len(loader)`` steps per epoch and ``loader.batches(epoch, start)``, all the loop needs; ``workers``
    processes read the next steps ahead."""

    def __init__(self, dataset: StreamDataset, *, workers: int = 0, pin_memory: bool = False) -> None:
        self.dataset = dataset
        self.sampler = _StepSampler(len(dataset))
        seeds = torch.Generator().manual_seed(dataset.seed)  # worker seeds from here: the global RNG stays
        self.loader = DataLoader(dataset, batch_size=None, sampler=self.sampler, num_workers=workers,
                                 collate_fn=collate_stream, pin_memory=pin_memory, generator=seeds,
                                 persistent_workers=workers > 0)  # fmt: skip

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, Any]]:
        self.sampler.epoch, self.sampler.start = int(epoch), int(start)
        return iter(self.loader)


def stream_step(device: torch.device, *, label_smoothing: float = 0.0, rank: int = 0) -> Any:
    """The step for a recurrent head: its memory is the step state (``fit`` checkpoints it).

    Loss: cross-entropy over the streams that read a chunk (weight 1); ended streams count for nothing.
    A state saved by another process (``fit`` keeps rank 0's under DDP) is not this process's memory: it
    is dropped, and this process's streams restart with empty memory.
    """

    def step(model: nn.Module, batch: dict[str, Any], state: Any) -> tuple[Step, Any]:
        feats, labels = to_device(batch, device)
        head = getattr(model, "module", model)  # DDP wraps the head
        B = len(labels)
        if state is None or int(state["rank"]) != rank:
            state = {"rank": torch.tensor(rank), "memory": head.init_memory(B, device)}
        memory = _to(state["memory"], device)
        reset, weight = batch["reset"].to(device), batch["weight"].to(device)
        logits, memory = model(feats, memory=memory, reset=reset)  # [B, C]
        loss = F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=label_smoothing)
        loss = (loss * weight).sum() / weight.sum().clamp(min=1.0)
        real = weight > 0
        return Step(loss, logits[real], labels[real]), {"rank": state["rank"], "memory": memory}

    return step


def _to(memory: Any, device: torch.device) -> Any:
    if isinstance(memory, torch.Tensor):
        return memory.to(device, non_blocking=True)
    if isinstance(memory, dict):
        return {k: _to(v, device) for k, v in memory.items()}
    if isinstance(memory, list):
        return [_to(v, device) for v in memory]
    return memory
