"""Reading a store: any clip of any stored view, consecutive chunks, batched, dequantised.

Example:
    >>> fs = FeatureStore("runs/k400_b16.zarr")            # doctest: +SKIP
    >>> fs.videos[0].id, fs.classes[fs.videos[0].label]    # doctest: +SKIP
    >>> x = fs.read(0, view=0, rows=slice(0, 16, 2), tensors=["b11.tokens"])["b11.tokens"]  # [8, 197, 768]
    >>> for chunk in fs.iter_chunks("vid_003", chunk=16, tensors=["b11.pooled"]): ...

The commit logs are the index: a video is visible iff its commit line exists. A reader opened while
stage one still runs sees the videos committed at open time (call :meth:`refresh` for more).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from store import codecs, layout
from store.errors import NotAStoreError, StoreCorruptError, StoreError, StoreMismatchError
from store.index import read_log
from store.schema import StoreSpec, TensorSpec, check_format
from store.shards import ShardCodec, ShardReader


@dataclass(frozen=True)
class VideoRecord:
    """One committed video: where each view's rows live, and what it is."""

    id: str
    label: int
    source: str
    fps: float
    num_frames: int
    part: str
    views: dict[int, tuple[int, int]]  # view -> (row_start, n_rows) within the part
    checksum: str
    meta: dict[str, Any] = field(default_factory=dict)
    view_meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    checksum_algo: str = "crc32"
    column_crcs: dict[str, str] = field(default_factory=dict)  # "{view}/{array}" -> CRC (crc32-v2 records)
    header: dict[str, Any] = field(default_factory=dict)  # what the digest covers besides the data

    def rows(self, view: int = 0) -> int:
        return self.views[view][1]


class FeatureStore:
    """Read-only view of a store on local disk or at any fsspec URL. Picklable (for loader workers)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        storage_options: dict[str, Any] | None = None,
        *,
        allow_duplicates: bool = False,
    ) -> None:
        self.path = str(path)
        self.allow_duplicates = allow_duplicates  # verify, inspect and dedupe look at a damaged store
        self.storage_options = storage_options
        self._group: zarr.Group | None = None
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._shards: dict[tuple[str, str], ShardReader | None] = {}  # local arrays read without zarr
        attrs = self._root_attrs()
        check_format(attrs, self.path)
        self.attrs = attrs
        self.spec = StoreSpec.from_json(attrs)
        self.refresh()

    # -- opening ----------------------------------------------------------------------------------
    def _open_group(self) -> zarr.Group:
        if self._group is None:
            try:
                self._group = zarr.open_group(
                    store=self.path,
                    mode="r",
                    use_consolidated=False,
                    storage_options=self.storage_options if "://" in self.path else None,
                )
            except (
                FileNotFoundError,
                zarr.errors.GroupNotFoundError,
                zarr.errors.NodeTypeValidationError,
                zarr.errors.ContainsArrayError,
                json.JSONDecodeError,
            ):
                raise NotAStoreError(
                    f"{self.path} is not a twostage store (no zarr group there). Point to the "
                    "folder `twostage extract` wrote (the `store.path` key of its extract config)."
                ) from None
        return self._group

    def _root_attrs(self) -> dict[str, Any]:
        attrs = self._open_group().attrs.asdict().get(layout.ATTRS_KEY)
        if not isinstance(attrs, dict):
            raise NotAStoreError(
                f"{self.path} is a zarr group but not a twostage store (no "
                f"'{layout.ATTRS_KEY}' attributes). Point to a store written by `twostage extract`."
            )
        return attrs

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"], state["_arrays"], state["_shards"] = None, {}, {}  # file descriptors stay here
        return state

    def refresh(self) -> None:
        """Re-read the commit and failure logs of every part.

        Raises:
            StoreCorruptError: two parts committed the same id (unless opened with ``allow_duplicates``).
        """
        videos, failures, self.log_problems, self.log_lines = [], {}, [], {}
        for part in self.parts():
            records, bad = read_log(self._join(layout.part_path(part), layout.COMMITS_FILE))
            self.log_problems += [
                f"{part}/{layout.COMMITS_FILE} line {n}: unreadable (checksum)" for n in bad
            ]
            self.log_lines[part] = len(records)
            retracted = {r["retract"] for r in records if "retract" in r}
            videos += [_record(part, r) for r in records if "retract" not in r and r["id"] not in retracted]
            for f in read_log(self._join(layout.part_path(part), layout.FAILURES_FILE))[0]:
                failures[f["id"]] = f | {"part": part}
        videos.sort(key=lambda v: (v.id, v.part))
        seen: dict[str, list[str]] = {}
        for v in videos:
            seen.setdefault(v.id, []).append(v.part)
        self.duplicates = {vid: parts for vid, parts in seen.items() if len(parts) > 1}
        if self.duplicates and not self.allow_duplicates:
            shown = "; ".join(f"{vid} in {', '.join(p)}" for vid, p in list(self.duplicates.items())[:5])
            raise StoreCorruptError(
                f"{self.path}: {len(self.duplicates)} video ids were committed by more than one part ({shown}"
                f"{'; ...' if len(self.duplicates) > 5 else ''}): two extractions wrote this store at once. "
                f"Run `twostage dedupe {self.path}` to keep one copy of each."
            )
        self.videos: list[VideoRecord] = videos
        self._by_id = {v.id: i for i, v in enumerate(videos)}
        self.failures = [f for vid, f in sorted(failures.items()) if vid not in self._by_id]

    def parts(self) -> list[str]:
        try:
            return sorted(self._open_group()[layout.PARTS_GROUP].group_keys())  # type: ignore[union-attr]
        except KeyError:
            return []

    def _join(self, *keys: str) -> str:
        return "/".join([self.path.rstrip("/"), *keys])

    # -- description ------------------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def backbone(self) -> dict[str, Any]:
        return self.spec.backbone

    @property
    def tensors(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.spec.tensors}

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    def __len__(self) -> int:
        return len(self.videos)

    def video(self, key: int | str) -> VideoRecord:
        if isinstance(key, str):
            if key not in self._by_id:
                raise KeyError(f"no committed video {key!r} in {self.path} ({len(self.videos)} videos)")
            return self.videos[self._by_id[key]]
        return self.videos[key]

    def frozen_weights(self) -> dict[str, np.ndarray]:
        group = self._open_group()
        return {
            name: np.asarray(group[f"{layout.FROZEN_GROUP}/{name}"][...])  # type: ignore[index]
            for name in self.spec.frozen
        }

    # -- integrity --------------------------------------------------------------------------------
    def check(
        self,
        video: int | str | VideoRecord,
        views: Sequence[int] | None = None,
        tensors: Sequence[str] | None = None,
    ) -> list[str]:
        """Problems of one committed video's stored bytes: checksum mismatches and NaN/Inf values.

        Current records ("crc32-v2") are checked column by column, so ``views`` and ``tensors`` (default:
        all) limit what is read; the record's own label and row pointers are checked against its digest.
        First-format records have one checksum over every column: they are always read whole.
        """
        rec = video if isinstance(video, VideoRecord) else self.video(video)
        if rec.checksum_algo != codecs.DIGEST_ALGO:
            return self._check_whole(rec)
        problems = []
        if codecs.video_digest(rec.header, rec.column_crcs) != rec.checksum:
            problems.append(
                "its commit record (label, row pointers or column checksums) was changed after it was "
                "committed"
            )
        names = [*layout.ROW_ARRAYS, *self._stored(self._names(tensors))]
        for view in sorted(rec.views) if views is None else views:
            start, n = self._view(rec, view)
            for name in names:
                key = f"{view}/{name}"
                values = self.read_raw(rec.part, name, start, start + n)
                if len(values) != n or codecs.column_crc(key, values) != rec.column_crcs.get(key):
                    problems.append(f"view {view}: {name}: checksum mismatch (changed after the commit)")
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    problems.append(f"view {view}: {name} holds NaN/Inf values")
        return problems

    def _check_whole(self, rec: VideoRecord) -> list[str]:
        checksum, problems = codecs.Checksum(), []
        for view, (start, n) in sorted(rec.views.items()):
            for name in sorted([*layout.ROW_ARRAYS, *self._stored(self._names(None))]):
                values = self.read_raw(rec.part, name, start, start + n)
                if len(values) != n:
                    return [f"view {view}: {name} has {len(values)} rows on disk, the index says {n}"]
                checksum.update(f"{view}/{name}", values)
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    problems.append(f"view {view}: {name} holds NaN/Inf values")
        if checksum.hexdigest() != rec.checksum:
            problems.insert(0, "checksum mismatch: the stored bytes changed after they were committed")
        return problems

    def _stored(self, names: Sequence[str]) -> list[str]:
        """The arrays that hold ``names``: int8 tensors come with their scale array."""
        out = []
        for name in names:
            out.append(name)
            if self.spec.tensor(name).quantised:
                out.append(name + layout.SCALE_SUFFIX)
        return out

    # -- reading ----------------------------------------------------------------------------------
    def array(self, part: str, name: str) -> zarr.Array:
        key = (part, name)
        if key not in self._arrays:
            self._arrays[key] = self._open_group()[layout.array_path(part, name)]  # type: ignore[assignment]
        return self._arrays[key]

    def _shard_reader(self, part: str, name: str) -> ShardReader | None:
        """The direct reader of a local array whose shards this package wrote (None: read with zarr)."""
        key = (part, name)
        if key not in self._shards:
            arr, folder = self.array(part, name), Path(self.path, layout.array_path(part, name))
            codec = None if "://" in self.path else ShardCodec.for_array(arr.metadata.to_dict())
            local = codec is not None and (folder / "zarr.json").is_file()
            reader = ShardReader(folder, codec, arr.shape[1:], arr.dtype) if codec and local else None
            self._shards[key] = reader
        return self._shards[key]

    def _slice(self, part: str, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of one array (clamped to its length, like a slice), in the stored dtype:
        one read per run of chunks through :class:`store.shards.ShardReader` for local stores, else zarr."""
        arr = self.array(part, name)
        reader = self._shard_reader(part, name)
        if reader is None:
            return np.asarray(arr[start:stop])
        start, stop, _ = slice(start, stop).indices(arr.shape[0])
        return reader.read(start, max(start, stop))

    def read_raw(self, part: str, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return self._slice(part, name, start, stop)
        except Exception as e:  # noqa: BLE001 - any decode failure of stored bytes is corruption
            raise StoreCorruptError(
                f"rows {start}:{stop} of {layout.array_path(part, name)} in {self.path} cannot be read "
                f"({type(e).__name__}: {e}). Run `twostage verify {self.path}` to list the damaged videos "
                "and extract them again."
            ) from e

    def read(
        self,
        video: int | str,
        view: int = 0,
        rows: slice | Sequence[int] | np.ndarray | None = None,
        tensors: Sequence[str] | None = None,
        dequantise: bool = True,
        dtype: Any = np.float32,
    ) -> dict[str, np.ndarray]:
        """Rows of one view: ``{name: [n, *shape]}``; ``rows`` picks the view's frames (slice or indices)."""
        rec = self.video(video)
        start, n = self._view(rec, view)
        idx = np.arange(n)[rows] if rows is not None else np.arange(n)
        return self._gather(rec.part, start, idx, self._names(tensors), dequantise, dtype)

    def read_clips(
        self,
        clips: Sequence[tuple[int | str, int, Sequence[int]]],
        tensors: Sequence[str] | None = None,
        dtype: Any = np.float32,
        out: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """A batch of clips ``(video, view, frame indices)`` of equal length: ``{name: [B, T, *shape]}``.

        One store read per part and stored array, whatever the batch size: the rows of every clip of a
        part are gathered in one orthogonal selection (the codec pipeline decodes the chunks they touch,
        once each, in parallel), then scattered into the output, which may be preallocated (``out``: one
        array per tensor, e.g. numpy views of pinned torch tensors; int8 tensors are dequantised into it).
        """
        names = self._names(tensors)
        spans = [self._clip_rows(v, view, idx) for v, view, idx in clips]
        lengths = {len(rows) for _, rows in spans}
        if len(lengths) > 1:
            raise StoreError(f"clips in one batch must have equal lengths, got {sorted(lengths)}")
        b, t = len(spans), lengths.pop() if lengths else 0
        result = {}
        for name in names:
            spec = self.spec.tensor(name)
            target = out[name] if out is not None else np.empty((b, t, *spec.shape), dtype=dtype)
            if target.shape != (b, t, *spec.shape) or not target.flags.c_contiguous:
                raise StoreError(
                    f"out[{name!r}] is {target.shape}, expected a C-contiguous {(b, t, *spec.shape)} array"
                )
            flat = target.reshape(b * t, *spec.shape)  # a view: target is contiguous
            for part, unique, slots, inverse in self._by_part(spans):
                values = self._rows(part, name, unique)  # [n, *shape] in the stored dtype
                if spec.quantised:
                    scale = self._rows(part, name + layout.SCALE_SUFFIX, unique)
                    values = codecs.dequantise_int8(values, scale, target.dtype)
                flat[slots] = values[inverse]
            result[name] = target
        return result

    def _clip_rows(self, video: int | str, view: int, idx: Sequence[int]) -> tuple[str, np.ndarray]:
        """(part, absolute row numbers) of one clip."""
        rec = self.video(video)
        start, n = self._view(rec, view)
        rows = np.arange(n)[np.asarray(idx, dtype=np.int64)]  # negative / out-of-range indices fail here
        return rec.part, start + rows

    @staticmethod
    def _by_part(spans: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """Per part: its sorted unique rows, the flat output slots [k*T] of its clips' rows, and which
        unique row fills each slot."""
        t = len(spans[0][1]) if spans else 0
        out = []
        for part in sorted({p for p, _ in spans}):
            clips = [i for i, (p, _) in enumerate(spans) if p == part]
            rows = np.concatenate([spans[i][1] for i in clips])  # [k*T]
            unique, inverse = np.unique(rows, return_inverse=True)
            slots = (np.asarray(clips)[:, None] * t + np.arange(t)).reshape(-1)  # [k*T]
            out.append((part, unique, slots, inverse))
        return out

    def _rows(self, part: str, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted, unique) of one array: one contiguous slice per run of rows no more than a
        chunk apart (local stores: the runs read by a few threads at once, so random reads keep several
        requests in flight; else the codec pipeline decodes each slice's chunks in parallel), then the
        rows picked.
        An orthogonal selection with the row numbers reads the same chunks but measured 3-4x slower
        (zarr handles integer selections chunk by chunk in Python); see BENCHMARKS.md."""
        try:
            arr = self.array(part, name)
            runs = np.split(rows, np.flatnonzero(np.diff(rows) > arr.chunks[0]) + 1) if len(rows) else []

            def piece(run: np.ndarray) -> np.ndarray:
                lo, hi = int(run[0]), int(run[-1]) + 1
                block = self._slice(part, name, lo, hi)
                return block if len(run) == hi - lo else block[run - lo]

            if len(runs) > 1 and self._shard_reader(part, name) is not None:  # reads in flight together
                pieces = list(_read_pool().map(piece, runs))
            else:
                pieces = [piece(run) for run in runs]
            if not pieces:
                return np.empty((0, *arr.shape[1:]), dtype=arr.dtype)
            return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        except Exception as e:  # noqa: BLE001 - any decode failure of stored bytes is corruption
            raise StoreCorruptError(
                f"rows of {layout.array_path(part, name)} in {self.path} cannot be read "
                f"({type(e).__name__}: {e}). Run `twostage verify {self.path}` to list the damaged videos "
                "and extract them again."
            ) from e

    def iter_chunks(
        self,
        video: int | str,
        chunk: int,
        view: int = 0,
        tensors: Sequence[str] | None = None,
        drop_last: bool = False,
        dtype: Any = np.float32,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive chunks of ``chunk`` frames, in time order; memory bounded by one chunk."""
        rec = self.video(video)
        _, n = self._view(rec, view)
        for s in range(0, n, chunk):
            if drop_last and s + chunk > n:
                return
            yield self.read(rec.id, view, slice(s, min(n, s + chunk)), tensors, dtype=dtype)

    def row_meta(self, video: int | str, view: int = 0) -> dict[str, np.ndarray]:
        rec = self.video(video)
        start, n = self._view(rec, view)
        return {name: self.read_raw(rec.part, name, start, start + n) for name in layout.ROW_ARRAYS}

    def _view(self, rec: VideoRecord, view: int) -> tuple[int, int]:
        if view not in rec.views:
            raise StoreMismatchError(f"video {rec.id!r} has views {sorted(rec.views)}, not {view}")
        return rec.views[view]

    def _names(self, tensors: Sequence[str] | None) -> list[str]:
        if tensors is None:
            return [t.name for t in self.spec.tensors]
        for name in tensors:
            self.spec.tensor(name)  # raises a StoreMismatchError naming what the store has
        return list(tensors)

    def _gather(
        self, part: str, start: int, idx: np.ndarray, names: list[str], dequantise: bool, dtype: Any
    ) -> dict[str, np.ndarray]:
        if idx.size == 0:
            lo = hi = 0
        else:
            lo, hi = int(idx.min()), int(idx.max()) + 1  # one contiguous slice read, then pick rows
        out = {}
        for name in names:
            t = self.spec.tensor(name)
            contiguous = idx.size == hi - lo and bool((np.diff(idx) == 1).all())  # a slice: no row picking
            pick = slice(None) if contiguous else idx - lo
            values = self.read_raw(part, name, start + lo, start + hi)[pick]
            if t.quantised and dequantise:
                scale = self.read_raw(part, name + layout.SCALE_SUFFIX, start + lo, start + hi)[pick]
                values = codecs.dequantise_int8(values, scale, dtype)
            elif dequantise:
                values = values.astype(dtype, copy=False)
            out[name] = values
        return out


_POOL: tuple[int, ThreadPoolExecutor] | None = None
READ_THREADS = 4  # concurrent reads of a batch's runs (pread and blosc release the GIL)


def _read_pool() -> ThreadPoolExecutor:
    """This process's read threads (a forked loader worker makes its own)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(READ_THREADS, thread_name_prefix="twostage-read"))
    return _POOL[1]


def _record(part: str, r: dict[str, Any]) -> VideoRecord:
    checksum = r["checksum"]
    views = {int(v["view"]): (int(v["row_start"]), int(v["n_rows"])) for v in r["views"]}
    view_meta = {
        int(v["view"]): {k: x for k, x in v.items() if k not in ("view", "row_start", "n_rows")}
        for v in r["views"]
    }
    return VideoRecord(
        id=r["id"],
        label=int(r["label"]),
        source=r["source"],
        fps=float(r["fps"]),
        num_frames=int(r["num_frames"]),
        part=part,
        views=views,
        checksum=checksum["value"],
        meta=r.get("meta", {}),
        view_meta=view_meta,
        checksum_algo=checksum.get("algo", "crc32"),
        column_crcs=dict(checksum.get("columns", {})),
        header=codecs.record_header(r),
    )
