"""Store -> PyTorch datasets: clips cut from stored rows, a stored view per epoch, jitter, token dropout.

    FeatureStore + video ids
      ClipDataset(mode="train"): key (epoch, i) = video i in that epoch: view v(seed, epoch, id), start
        row o (random within the stored rows with jitter, else centred); rows o + arange(T) * stride
      ClipDataset(mode="eval"):  key i = (video, view, clip k) for every stored view, eval_clips per view
      --__getitems__: one batched store read per batch--> {name: [B, T, *shape]}, labels [B], video [B]
    EpochLoader: batches(epoch, start) -> this process's batches of an epoch, from batch `start` on

A stride counts stored rows: a view of 8 stored rows gives T=8 stride 1, T=4 stride 2 or 3, T=2 stride
up to 7. Every random choice is a function of (seed, epoch, video id) alone, and the epoch travels with
each key, so a batch is the same whatever the loader workers, the batch size or the process that reads
it, and an epoch can restart at any batch (exact resume mid-epoch).

Example:
    >>> fs = FeatureStore("runs/tiny.zarr")                                   # doctest: +SKIP
    >>> train_ids, val_ids = split_ids(fs, val_fraction=0.2)                  # doctest: +SKIP
    >>> ds = ClipDataset(fs, train_ids, 8, 1, "train", tensors=["final.cls"])  # doctest: +SKIP
    >>> batch = collate_clips(ds.__getitems__([(3, 0), (3, 1)]))              # doctest: +SKIP
    >>> batch["feats"]["final.cls"].shape                                     # doctest: +SKIP
    torch.Size([2, 8, 512])
"""

from __future__ import annotations

import hashlib
import multiprocessing
import warnings
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stages.core.errors import StoreCorruptError, StoreMismatchError
from store import FeatureStore
from store.contract import CELL_KINDS, TOKEN_KINDS

VIEW_POLICIES = ("cycle", "random", "first")  # which stored view a video gives in each training epoch
INTEGRITY = ("check", "skip", "off")  # what a reader does with a damaged video (see ClipDataset._sound)


def split_ids(store: FeatureStore, val_fraction: float) -> tuple[list[str], list[str]]:
    """Labelled video ids, split into (train, val) by a stable hash of each id.

    The split depends on the id alone (not on the seed, the order or the other videos), so runs with
    other seeds or on a grown store keep their validation videos. Unlabelled videos (label -1) are left out.
    """
    train, val = [], []
    for rec in store.videos:
        if rec.label < 0:
            continue
        digest = hashlib.blake2b(rec.id.encode(), digest_size=8).digest()
        (val if int.from_bytes(digest, "little") / 2**64 < val_fraction else train).append(rec.id)
    return train, val


def clip_span(frames: int, stride: int) -> int:
    """Stored rows one clip covers."""
    return (frames - 1) * stride + 1


def check_clips_fit(
    store: FeatureStore, ids: Sequence[str], frames: int, stride: int, short_videos: str = "refuse"
) -> None:
    """Refuse, before training, a clip longer than some stored views (unless ``short_videos="pad"``)."""
    span = clip_span(frames, stride)
    short = [
        (store.video(v).id, view, n) for v in ids for view, (_, n) in store.video(v).views.items() if n < span
    ]
    if not short or short_videos == "pad":
        return
    vid, view, n = min(short, key=lambda s: s[2])
    fits = f"frames={n} with stride 1" + (
        f", or frames={(n - 1) // stride + 1} with stride {stride}" if stride > 1 else ""
    )
    sampling = store.spec.sampling
    raise StoreMismatchError(
        f"data.frames={frames} x data.stride={stride} needs {span} stored rows per view, but {len(short)} "
        f"view(s) of {store.path} hold fewer (shortest: {vid!r} view {view} with {n} rows; the store was "
        f"extracted with sampling mode={sampling.get('mode')!r} frames={sampling.get('frames')} "
        f"stride={sampling.get('stride')}). Ask for at most {fits}, extract "
        "again with more frames, or set data.short_videos=pad to repeat the last stored row."
    )


def clip_rows(n_rows: int, frames: int, stride: int, start: int) -> np.ndarray:
    """Row indices ``start + arange(frames) * stride``, clamped to the last row (padding short views)."""
    return np.minimum(start + np.arange(frames, dtype=np.int64) * stride, n_rows - 1)  # [T]


def spread_starts(slack: int, count: int) -> list[int]:
    """``count`` distinct clip starts evenly over ``[0, slack]`` (one clip = centred)."""
    if count == 1:
        return [slack // 2]
    return sorted({int(round(x)) for x in np.linspace(0, slack, count)})


class ClipDataset(Dataset):
    """Clips of stored rows; ``mode="train"`` (a video per item) or ``"eval"`` (a clip of a view per item).

    Args:
        store: an open :class:`store.FeatureStore` (picklable: loader workers reopen it lazily).
        split_ids: the video ids of this split (see :func:`split_ids`).
        frames, stride: T frames, ``stride`` stored rows apart.
        mode: ``"train"`` or ``"eval"``.
        tensors: store tensor names to read (the head's ``inputs``).
        jitter: train: random start row within the stored rows (else centred).
        token_dropout: train: probability of zeroing a patch token or pooled cell (CLS never).
        seed: with the epoch, fixes every random choice.
        views: train view per (epoch, video): ``cycle`` (each in turn, from a per-video phase),
            ``random`` (uniform each epoch) or ``first`` (always view 0: no view augmentation).
        eval_clips: eval: clips per view, starts spread evenly over the stored rows.
        short_videos: ``refuse`` (:class:`StoreMismatchError` now) or ``pad`` a view shorter than a clip.
        integrity: ``check`` each (video, view) against its checksums the first time it is read and stop
            on damage, ``skip`` damaged videos with a warning, or ``off``.
        labels: per video, what a batch's ``label`` holds: default the store's label ``[N]``; the label
            columns ``[N, W]`` of :meth:`stages.train.targets.Targets.encode` for ``data.targets``.

    Raises:
        StoreMismatchError: a tensor the store lacks, or a clip longer than a stored view.
    """

    def __init__(
        self,
        store: FeatureStore,
        split_ids: Sequence[str],
        frames: int,
        stride: int,
        mode: Literal["train", "eval"],
        tensors: Sequence[str],
        jitter: bool = True,
        token_dropout: float = 0.0,
        seed: int = 0,
        views: str = "cycle",
        eval_clips: int = 1,
        short_videos: str = "refuse",
        integrity: str = "check",
        labels: np.ndarray | None = None,
    ) -> None:
        if integrity not in INTEGRITY:
            raise ValueError(f"integrity must be one of {INTEGRITY}, got {integrity!r}")
        self.integrity, self._checked, self._damaged = integrity, {}, set()
        self.pin = False  # read straight into pinned host memory (EpochLoader sets it: CUDA, no workers)
        if mode not in ("train", "eval") or views not in VIEW_POLICIES:
            raise ValueError(
                f"need mode 'train' or 'eval' and views in {VIEW_POLICIES}, got {mode!r}, {views!r}"
            )
        self.store, self.frames, self.stride, self.mode = store, frames, stride, mode
        self.tensors = list(tensors)
        for name in self.tensors:
            store.spec.tensor(name)  # StoreMismatchError naming what the store holds
        self.ids = list(split_ids)
        check_clips_fit(store, self.ids, frames, stride, short_videos)
        self.jitter, self.token_dropout, self.seed, self.views = jitter, token_dropout, seed, views
        if labels is None:  # the store's label; data.targets: label columns [N, W] (stages/train/targets)
            labels = np.array([store.video(v).label for v in self.ids], dtype=np.int64)
        if len(labels) != len(self.ids):
            raise ValueError(f"labels has {len(labels)} rows for {len(self.ids)} videos")
        self.labels = labels
        self._keys = [zlib.crc32(v.encode()) for v in self.ids]  # stable per-video seed part
        self._kinds = {t.name: (t.kind, t.shape) for t in store.spec.tensors if t.name in self.tensors}
        self.items = self._eval_items(eval_clips) if mode == "eval" else []

    def _eval_items(self, eval_clips: int) -> list[tuple[int, int, int]]:
        span, items = clip_span(self.frames, self.stride), []
        for i, vid in enumerate(self.ids):
            for view, (_, n) in sorted(self.store.video(vid).views.items()):
                items += [(i, view, s) for s in spread_starts(max(n - span, 0), eval_clips)]
        return items

    def __len__(self) -> int:
        return len(self.items) if self.mode == "eval" else len(self.ids)

    def _rng(self, epoch: int, i: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, self._keys[i], stream])

    def clip(self, key: Key) -> tuple[int, int, np.ndarray]:
        """(video number, view, row indices [T]) of ``key``: ``(epoch, item)`` or an item number."""
        epoch, index = split_key(key)
        if self.mode == "eval":
            i, view, start = self.items[index]
            n = self.store.video(self.ids[i]).views[view][1]
            return i, view, clip_rows(n, self.frames, self.stride, start)
        rec, rng = self.store.video(self.ids[index]), self._rng(epoch, index, 0)
        views = sorted(rec.views)
        if self.views == "random":
            view = views[int(rng.integers(len(views)))]
        elif self.views == "cycle":
            view = views[(epoch + self._keys[index]) % len(views)]
        else:
            view = views[0]
        n = rec.views[view][1]
        slack = max(n - clip_span(self.frames, self.stride), 0)
        start = int(rng.integers(slack + 1)) if self.jitter else slack // 2
        return index, view, clip_rows(n, self.frames, self.stride, start)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        batch = self.__getitems__([key])
        return {
            "feats": {k: v[0] for k, v in batch["feats"].items()},
            "label": batch["label"][0],
            "video": batch["video"][0],
        }

    def __getitems__(self, keys: Sequence[Key]) -> dict[str, Any]:
        """A whole batch in one store read: ``{"feats": {name: [B, T, ...]}, "label": [B], "video": [B]}``."""
        pairs = [(k, c) for k in keys if self._sound(c := self.clip(k))]
        keys, clips = [k for k, _ in pairs], [c for _, c in pairs]
        feats = self.store.read_clips(
            [(self.ids[i], view, rows) for i, view, rows in clips], tensors=self.tensors, dtype=np.float16,
            out=self._buffers(len(clips)),
        )  # fmt: skip
        if self.mode == "train" and self.token_dropout > 0:
            for b, ((i, _, _), key) in enumerate(zip(clips, keys, strict=True)):
                self._drop_tokens(feats, b, self._rng(split_key(key)[0], i, 1))
        videos = np.array([i for i, _, _ in clips], dtype=np.int64)
        return {"feats": feats, "label": self.labels[videos], "video": videos}

    def _buffers(self, batch: int) -> dict[str, np.ndarray] | None:
        """Pinned output arrays for one batch (torch's caching host allocator recycles them once the
        transfer that used them is done), or None to let the store allocate."""
        if not self.pin:
            return None
        shapes = {name: self.store.spec.tensor(name).shape for name in self.tensors}
        return {
            name: torch.empty((batch, self.frames, *shape), dtype=torch.float16, pin_memory=True).numpy()
            for name, shape in shapes.items()
        }

    def _sound(self, clip: tuple[int, int, np.ndarray]) -> bool:
        """Integrity on read: the first time this process reads a (video, view), its columns are checked
        against their checksums and scanned for NaN/Inf. Damaged: stop (``integrity="check"``, the default)
        or leave the video out with a warning (``"skip"``); ``"off"`` trusts the store."""
        i, view, _ = clip
        if self.integrity == "off":
            return True
        if (i, view) not in self._checked:
            problems = self.store.check(self.ids[i], views=[view], tensors=self.tensors)
            self._checked[(i, view)] = not problems
            if problems and self.integrity == "check":
                raise StoreCorruptError(
                    f"video {self.ids[i]!r} of {self.store.path} is damaged ({'; '.join(problems)}). Run "
                    f"`twostage verify {self.store.path}` for the full list and extract the damaged videos "
                    "again, or set data.integrity=skip to train without them."
                )
            if problems and not any(j == i for j, _ in self._damaged):  # one warning per video
                warnings.warn(f"skipping damaged video {self.ids[i]!r}: {'; '.join(problems)}", stacklevel=2)
            if problems:
                self._damaged.add((i, view))
        return self._checked[(i, view)]

    def _drop_tokens(self, feats: dict[str, np.ndarray], b: int, rng: np.random.Generator) -> None:
        """Zero the same random patch tokens of clip ``b`` in every tensor with that token axis."""
        masks: dict[tuple[str, int], np.ndarray] = {}
        for name, (kind, shape) in sorted(self._kinds.items()):
            if kind not in TOKEN_KINDS + CELL_KINDS:
                continue
            key = ("cells" if kind in CELL_KINDS else "tokens", shape[0])
            if key not in masks:
                drop = rng.random((self.frames, shape[0])) < self.token_dropout  # [T, L]
                if key[0] == "tokens":
                    drop[:, 0] = False  # the CLS token carries the frame summary: keep it
                masks[key] = drop
            feats[name][b][masks[key]] = 0


def collate_clips(batch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """A batch from :meth:`ClipDataset.__getitems__` (or a list of items) as tensors."""
    if isinstance(batch, list):  # items one by one (a plain DataLoader without __getitems__)
        batch = {
            "feats": {k: np.stack([s["feats"][k] for s in batch]) for k in batch[0]["feats"]},
            "label": np.array([s["label"] for s in batch]),
            "video": np.array([s["video"] for s in batch]),
        }
    return {
        "feats": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch["feats"].items()},
        "label": torch.as_tensor(batch["label"], dtype=torch.long),
        "video": torch.as_tensor(batch["video"], dtype=torch.long),
    }


Key = int | tuple[int, int]  # an item number, or (epoch, item number)


def split_key(key: Key) -> tuple[int, int]:
    """``(epoch, item)`` of a dataset key; a bare item number is epoch 0."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return 0, int(key)


class EpochSampler(Sampler[tuple[int, int]]):
    """This process's share of a seeded per-epoch permutation (train) or of the items in order (eval),
    as ``(epoch, item)`` keys, optionally from a position on (``start``: items to skip).

    Unlike ``DistributedSampler`` it never repeats items: an evaluation sees every clip exactly once
    across processes. Shuffled (training) shares are made equal by leaving out the last ``size % world``
    items of the epoch's permutation (other items each epoch), so every process takes as many steps.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.size, self.shuffle, self.seed, self.rank, self.world = size, shuffle, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` next, skipping this process's first ``start`` items."""
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
            order = order[: self.full_length() * self.world]  # equal shares: DDP processes step together
        else:
            order = list(range(self.size))
        return iter([(self.epoch, i) for i in order[self.rank :: self.world][self.start :]])

    def full_length(self) -> int:
        """Items this process takes in a whole epoch."""
        return self.size // self.world if self.shuffle else len(range(self.rank, self.size, self.world))

    def __len__(self) -> int:
        return max(0, self.full_length() - self.start)


def _worker_context() -> Any:
    """Loader processes start from a fork server, never forked from this process: the zarrs codec
    pipeline's thread pool does not survive a fork, so a forked worker's first store read would wait
    forever once this process has decoded anything (frozen weights, an integrity check)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["stages.train.data"])  # imported once by the server, not per worker
    return ctx


class EpochLoader:
    """Batches of a dataset for this process, epoch by epoch, restartable at any batch.

    ``len(loader)`` is the number of batches of a whole epoch; ``loader.batches(epoch, start)`` iterates
    epoch ``epoch`` from batch ``start`` on (one batched store read each, ``workers`` processes reading
    ahead). The training loop needs nothing else of its data.
    """

    def __init__(
        self, dataset: Any, *, batch_size: int, shuffle: bool, workers: int = 0, seed: int = 0,
        rank: int = 0, world: int = 1, pin_memory: bool = False, collate: Any = None,
    ) -> None:  # fmt: skip
        self.dataset, self.batch_size = dataset, batch_size
        if workers == 0 and pin_memory and hasattr(dataset, "pin"):
            dataset.pin = True  # the store reads straight into pinned memory: no copy before the transfer
        self.sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world=world)
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            multiprocessing_context=_worker_context() if workers > 0 else None,
            collate_fn=collate or collate_clips, pin_memory=pin_memory, persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(seed),  # worker seeds: not the global RNG
        )  # fmt: skip

    def __len__(self) -> int:
        return -(-self.sampler.full_length() // self.batch_size)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Any]:
        """Epoch ``epoch``'s batches from batch ``start`` on."""
        self.sampler.set_epoch(epoch, start * self.batch_size)
        return iter(self.loader)
