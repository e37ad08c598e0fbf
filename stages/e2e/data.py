"""Training batches that follow the multigrid plan, and evaluation batches, for ``stages.train.loop.fit``.

    epoch e: permutation of the N training videos (seed, e), cut to a multiple of the process count
      iteration i takes the next plan.epochs[e].iteration(i) = (global batch, crop) videos; process r takes
      every world-th of them; each becomes ClipKey(e, video, frames, stride, crop)
      --VideoClipDataset (decode, clip-consistent crop/flip/jitter at that size)--> [T', 3, S', S'] clips
      --collate--> {"feats": {"pixels": [b, T', 3, S', S']}, "label": [b], "video": [b]}

The shape of every clip travels in its key, so one dataset and one loader serve every shape (nothing is
rebuilt when the shape changes), and the batch of iteration i of epoch e is a pure function of (seed, e,
i): an epoch restarts at any batch (exact resume mid-cycle). With the long cycle, a clip of T' < T frames
draws its stride from [stride, stride x T // T'] (SlowFast's coarser sampling grid, methods.md §4.5).

``fit`` asks ``len(data)`` once before each epoch's ``batches(epoch, start)`` and reads the epoch to its
end; multigrid epochs differ in length, so ``len`` answers for the epoch that comes next (the first one
given at construction, then the one after the last epoch read to its end).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from stages.e2e.multigrid import EpochShape, stride_range
from stages.train.data import EpochLoader
from stages.video.dataset import ClipKey, VideoClipDataset, collate_pixels


def collate(samples: list[dict]) -> dict[str, Any]:
    """Pixel clips as the model's input dict: ``{"feats": {"pixels": [B, T, 3, S, S]}, "label", "video"}``."""
    batch = collate_pixels(samples)
    return {"feats": {"pixels": batch["pixels"]}, "label": batch["label"], "video": batch["video"]}


def epoch_batches(shape: EpochShape, clips: int) -> list[tuple[int, int, int]]:
    """``(offset, global size, crop)`` of every iteration of an epoch over ``clips`` clips: the short
    cycle's batch sizes in turn; the last batch takes what is left (it may be smaller)."""
    out, offset, i = [], 0, 0
    while offset < clips:
        size, crop = shape.iteration(i)
        out.append((offset, min(size, clips - offset), crop))
        offset, i = offset + size, i + 1
    return out


class _ScheduleSampler:
    """Lists of :class:`ClipKey` per batch for this process, following the plan (a batch sampler)."""

    def __init__(
        self, epochs: Sequence[EpochShape], videos: int, *, frames: int, stride: int, long_cycle: bool,
        seed: int, rank: int, world: int,
    ) -> None:  # fmt: skip
        self.epochs, self.videos, self.frames, self.stride = epochs, videos, frames, stride
        self.long_cycle, self.seed, self.rank, self.world = long_cycle, seed, rank, world
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[int], list[tuple[int, int, int]]] | None = None

    def plan(self, epoch: int) -> list[tuple[int, int, int]]:
        """``(offset, global size, crop)`` of every iteration of ``epoch``."""
        return self._epoch(epoch)[1]

    def _epoch(self, epoch: int) -> tuple[list[int], list[tuple[int, int, int]]]:
        """The epoch's video order and iterations, computed once per epoch."""
        if self._cache is None or self._cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.videos, generator=g).tolist()  # [N]
            batches = epoch_batches(self.epochs[epoch], self.videos - self.videos % self.world)
            self._cache = (epoch, order, batches)
        return self._cache[1], self._cache[2]

    def keys(self, epoch: int, i: int) -> list[ClipKey]:
        """This process's keys of iteration ``i`` of ``epoch``."""
        shape = self.epochs[epoch]
        order, batches = self._epoch(epoch)
        offset, size, crop = batches[i]
        lo, hi = stride_range(self.frames, shape.frames, self.stride, self.long_cycle)
        mine = order[offset : offset + size][self.rank :: self.world]
        return [ClipKey(epoch, v, shape.frames, self._stride(epoch, v, lo, hi), crop) for v in mine]

    def _stride(self, epoch: int, video: int, lo: int, hi: int) -> int:
        if lo == hi:
            return lo
        return int(np.random.default_rng([self.seed, epoch, video]).integers(lo, hi + 1))

    def __iter__(self) -> Iterator[list[ClipKey]]:
        for i in range(self.start, len(self.plan(self.epoch))):
            yield self.keys(self.epoch, i)

    def __len__(self) -> int:
        return max(0, len(self.plan(self.epoch)) - self.start)


class ScheduledBatches:
    """Training data for ``fit``: batches whose shapes follow the plan, restartable at any batch.

    Args:
        dataset: a training :class:`VideoClipDataset` (keys carry the shape).
        epochs: the plan's epochs (``stages.e2e.multigrid.make_plan(...).epochs``), crops in pixels.
        frames, stride: the full-shape clip (the stride range of shorter clips derives from it).
        long_cycle: whether shorter clips draw their stride (SlowFast's long-cycle sampling rate).
        first_epoch: the epoch ``fit`` starts with (a resumed run's).
    """

    def __init__(
        self, dataset: VideoClipDataset, epochs: Sequence[EpochShape], *, frames: int, stride: int,
        long_cycle: bool, seed: int = 0, rank: int = 0, world: int = 1, workers: int = 0,
        pin_memory: bool = False, first_epoch: int = 0,
    ) -> None:  # fmt: skip
        if len(dataset) < world:
            raise ValueError(f"{len(dataset)} training videos cannot be shared by {world} processes")
        self.sampler = _ScheduleSampler(epochs, len(dataset), frames=frames, stride=stride,
                                        long_cycle=long_cycle, seed=seed, rank=rank, world=world)  # fmt: skip
        self.loader = DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=workers, collate_fn=collate,
            pin_memory=pin_memory, persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(seed),  # worker seeds: not the global RNG
        )  # fmt: skip
        self.next_epoch = first_epoch

    def batches_in(self, epoch: int) -> int:
        """Batches of ``epoch`` (the same on every process)."""
        return len(self.sampler.plan(epoch))

    def __len__(self) -> int:
        return self.batches_in(min(self.next_epoch, len(self.sampler.epochs) - 1))

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Epoch ``epoch``'s batches from batch ``start`` on."""
        self.sampler.epoch, self.sampler.start = epoch, start
        yield from self.loader
        self.next_epoch = epoch + 1


class _ByIndex(Dataset):
    """An evaluation dataset addressed by ``EpochSampler``'s ``(epoch, item)`` keys."""

    def __init__(self, dataset: VideoClipDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        return self.dataset[int(key[1])]


def eval_loader(
    dataset: VideoClipDataset, *, batch_size: int, workers: int, rank: int, world: int, pin_memory: bool
) -> EpochLoader:
    """Every (video, view) clip once across processes, in order, at the full shape."""
    return EpochLoader(_ByIndex(dataset), batch_size=batch_size, shuffle=False, workers=workers, rank=rank,
                       world=world, pin_memory=pin_memory, collate=collate)  # fmt: skip
