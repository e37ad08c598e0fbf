"""Writing a store: the coordinator creates it, each writer appends videos to the part it owns.

    create_store(path, spec)                      # once, by the coordinator (idempotent for the same spec)
    with PartWriter(path, "p0000") as w:          # one per process / task; nobody else writes this part
        done = w.committed_ids()                  # resume: skip these
        w.add(video, views)                       # buffered; committed once every row is on disk
        w.fail(video_id, path, stage, error)
    finalize(path)                                # coordinator: index arrays + "complete" flag

Durability: rows are written whole-shard at a time (a shard is the unit of writing; writers never
share one), plus a partial flush every ``commit_interval_s`` so a killed run loses at most that much
work. A video's commit line is appended only after all its rows are written; a line is checksummed so
a torn last line is ignored. Reopening a part truncates rows past the last committed video.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from store import codecs, layout, locks
from store.errors import InvalidIdError, NotAStoreError, StoreError, StoreMismatchError
from store.index import read_log, write_log_line
from store.rows import RowArray
from store.schema import StoreSpec, TensorSpec, check_format, diff

PACKAGE_VERSION = "0.1.0"


@dataclass
class ViewRows:
    """The rows of one view of one video: per-frame tensors plus per-frame metadata."""

    view: int
    tensors: dict[
        str, Any
    ]  # name -> [n, *shape] float array/tensor, or (q int8, scale fp16) if pre-quantised
    time_s: np.ndarray  # [n] float64
    frame_index: np.ndarray  # [n] int64
    padded: np.ndarray | None = None  # [n] bool
    meta: dict[str, Any] = field(default_factory=dict)  # crop, temporal/spatial position...


@dataclass(frozen=True)
class ViewSpec:
    """A view to reserve rows for (:meth:`PartWriter.begin`): its number, row count and metadata."""

    view: int
    n_rows: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _OpenView:
    row_start: int
    n_rows: int
    meta: dict[str, Any]
    received: int = 0
    crcs: dict[str, int] = field(default_factory=dict)  # "{view}/{array}" -> running CRC-32


@dataclass
class _OpenVideo:
    video: VideoEntry
    views: dict[int, _OpenView] = field(default_factory=dict)


@dataclass
class VideoEntry:
    id: str
    label: int  # class index, -1 when unlabelled
    source: str
    fps: float
    num_frames: int
    meta: dict[str, Any] = field(default_factory=dict)


def validate_id(video_id: str) -> str:
    """Refuse ids that could escape the store directory or break the index."""
    bad = (
        not video_id
        or len(video_id) > 200
        or "/" in video_id
        or "\\" in video_id
        or video_id in (".", "..")
        or ".." in video_id
        or any(ord(c) < 32 for c in video_id)
    )
    if bad:
        raise InvalidIdError(
            f"video id {video_id!r} is not allowed: ids must be 1-200 characters without '/', '\\', '..' "
            "or control characters. Give the video an explicit safe `id` in the source list."
        )
    return video_id


def create_store(
    path: str | os.PathLike[str],
    spec: StoreSpec,
    *,
    overwrite: bool = False,
    frozen: dict[str, np.ndarray] | None = None,
) -> None:
    """Create the store, or check that an existing one was made with the same spec.

    Raises:
        StoreMismatchError: the store exists with another feature config (listing the differences),
            unless ``overwrite`` is set, which deletes it and starts anew.
        NotAStoreError: the path exists, is not empty, and is not a twostage store (never deleted).
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise StoreError(
            f"store.path={root} is a file; a store is a folder (new, or one `twostage extract` wrote): "
            "give another path"
        )
    with locks.store_admin(root):  # one process creates, checks or deletes at a time
        if root.exists() and any(root.iterdir()):
            attrs = read_root_attrs(root)  # raises NotAStoreError for foreign folders
            check_format(attrs, str(root))
            if attrs["fingerprint"] == spec.fingerprint:
                return
            _refuse_replacing(root, attrs, spec, overwrite)
            shutil.rmtree(root)
        _create(root, spec, frozen)


def _refuse_replacing(root: Path, attrs: dict[str, Any], spec: StoreSpec, overwrite: bool) -> None:
    """Refuse to replace a store made with another config, unless asked to and nobody is writing it."""
    if not overwrite:
        changes = diff(StoreSpec.from_json(attrs).identity(), spec.identity())
        raise StoreMismatchError(
            f"store {root} was extracted with another config ({len(changes)} differences: "
            + "; ".join(changes[:8])
            + ("; ..." if len(changes) > 8 else "")
            + "). Use another store path, or start anew with store.overwrite=true (deletes its "
            f"{count_committed(root)} committed videos)."
        )
    writers = locks.live_writers(root)
    if writers:
        raise StoreError(
            f"store.overwrite=true would delete {root} while it is being written "
            f"({'; '.join(writers.values())}); "
            "wait for that extraction to end (or stop it), then run again. A LOCK left by a writer that "
            "died on another host can be deleted by hand."
        )


def _create(root: Path, spec: StoreSpec, frozen: dict[str, np.ndarray] | None) -> None:
    group = zarr.create_group(
        store=str(root),
        zarr_format=3,
        overwrite=True,
        attributes={layout.ATTRS_KEY: spec.to_json(PACKAGE_VERSION) | {"complete": None}},
    )
    group.require_group(layout.PARTS_GROUP)
    frozen_group = group.require_group(layout.FROZEN_GROUP)
    for name, value in (frozen or {}).items():
        frozen_group.create_array(name, data=np.asarray(value, dtype=np.float32), overwrite=True)


def read_root_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        group = zarr.open_group(store=str(path), mode="r", use_consolidated=False)
        attrs = group.attrs.asdict().get(layout.ATTRS_KEY)
    except (
        FileNotFoundError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
        zarr.errors.ContainsArrayError,
        json.JSONDecodeError,
    ) as e:
        raise NotAStoreError(
            f"{path} is not a twostage store ({type(e).__name__}). Point to the folder "
            "that `twostage extract` wrote (the `store.path` key of the extract config)."
        ) from None
    if not isinstance(attrs, dict):
        raise NotAStoreError(
            f"{path} is a zarr group but not a twostage store (no '{layout.ATTRS_KEY}' "
            "attributes). Point to a store written by `twostage extract`."
        )
    return attrs


def count_committed(path: str | os.PathLike[str]) -> int:
    parts = Path(path) / layout.PARTS_GROUP
    return (
        sum(len(read_log(p / layout.COMMITS_FILE)[0]) for p in parts.iterdir() if p.is_dir())
        if parts.is_dir()
        else 0
    )


def set_complete(path: str | os.PathLike[str], summary: dict[str, Any] | None) -> None:
    """Mark the store complete (with a summary) or, with ``None``, in progress. Coordinator only."""
    group = zarr.open_group(store=str(path), mode="r+", use_consolidated=False)
    current = group.attrs.asdict()[layout.ATTRS_KEY]
    if not isinstance(current, dict):
        raise NotAStoreError(f"{path} has no '{layout.ATTRS_KEY}' attributes; it is not a twostage store")
    attrs = dict(current)
    attrs["complete"] = summary
    group.attrs.update({layout.ATTRS_KEY: attrs})


class PartWriter:
    """Appends committed videos to one part of a store; the only writer of that part."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        part: str,
        *,
        shard_mb: float | None = None,
        commit_interval_s: float = 30.0,
        steal_lock: bool = False,
    ) -> None:
        self.path = Path(path)
        attrs = read_root_attrs(self.path)
        check_format(attrs, str(self.path))
        self.spec = StoreSpec.from_json(attrs)
        self.part = part
        self.dir = self.path / layout.part_path(part)
        with locks.store_admin(self.path):  # no overwrite can start between these checks and our LOCK
            read_root_attrs(self.path)  # the store may have been replaced while we waited
            self._refuse_other_splits()
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock: Path | None = locks.acquire(self.dir / layout.LOCK_FILE, steal_lock)
        self.commit_interval_s = commit_interval_s
        storage = self.spec.storage
        shard_bytes = int((shard_mb or storage.get("shard_mb", 64)) * (1 << 20))
        group = zarr.open_group(store=str(self.path), mode="r+", use_consolidated=False)
        part_group = group.require_group(layout.part_path(part))
        self._arrays = _open_arrays(
            part_group,
            self.spec,
            storage.get("compression", "lz4"),
            shard_bytes,
            bool(storage.get("chunk_crc", False)),
            self.dir,
        )
        self._committed, self._next_row = self._resume()
        self._seen = set(self._committed)  # committed or buffered: an id may be added once
        self._elsewhere = self._committed_elsewhere()  # id -> part: another part already holds it
        self._pending: list[dict[str, Any]] = []  # commit records of finished videos, waiting for the disk
        self._open: dict[str, _OpenVideo] = {}  # videos begun, not yet ended
        self._last_commit = time.monotonic()

    # -- public API -------------------------------------------------------------------------------
    def committed_ids(self) -> set[str]:
        return set(self._committed)

    def add(self, video: VideoEntry, views: list[ViewRows]) -> None:
        """Write all views of a video at once; it is committed (visible) once every row is on disk."""
        if not views:
            raise StoreError(f"video {video.id!r} has no views to store")
        views = sorted(views, key=lambda v: v.view)
        for v in views:  # validate every view before reserving anything
            self._columns(video.id, v.view, v.tensors, v.time_s, v.frame_index, v.padded)
        self.begin(video, [ViewSpec(v.view, len(v.time_s), v.meta) for v in views])
        for v in views:
            self.put(video.id, v.view, 0, v.tensors, v.time_s, v.frame_index, v.padded)
        self.end(video.id)

    def begin(self, video: VideoEntry, views: list[ViewSpec]) -> None:
        """Reserve the rows of a video's views; its rows then arrive with :meth:`put` (in order per view,
        views in any order, several videos at once) and :meth:`end` makes it committable."""
        validate_id(video.id)
        if video.id in self._seen:
            raise StoreError(f"video {video.id!r} is already in part {self.part}; ids must be unique")
        if video.id in self._elsewhere:
            raise StoreError(
                f"video {video.id!r} is already committed in part {self._elsewhere[video.id]} of "
                f"{self.path}; ids are unique across a store (skip the ids `FeatureStore(path).videos` lists)"
            )
        if not views:
            raise StoreError(f"video {video.id!r} has no views to store")
        if len({v.view for v in views}) != len(views):
            raise StoreError(f"video {video.id!r} repeats a view number: {[v.view for v in views]}")
        if any(v.n_rows < 1 for v in views):
            raise StoreError(
                f"video {video.id!r}: every view needs rows; got {[(v.view, v.n_rows) for v in views]}"
            )
        opened = _OpenVideo(video)
        for v in sorted(views, key=lambda v: v.view):
            opened.views[v.view] = _OpenView(self._next_row, v.n_rows, dict(v.meta))
            self._next_row += v.n_rows
        self._open[video.id] = opened
        self._seen.add(video.id)

    def put(
        self, video_id: str, view: int, row0: int, tensors: dict[str, Any], time_s: Any, frame_index: Any,
        padded: Any = None,
    ) -> None:  # fmt: skip
        """Rows ``row0 ..`` of a view of an open video (every stored tensor, and the per-row metadata)."""
        opened = self._open.get(video_id)
        if opened is None or view not in opened.views:
            raise StoreError(
                f"video {video_id!r} view {view} is not open in part {self.part}; begin() it first"
            )
        v = opened.views[view]
        columns = self._columns(video_id, view, tensors, time_s, frame_index, padded)
        n = len(columns["time_s"])
        if row0 != v.received or row0 + n > v.n_rows:
            raise StoreError(
                f"video {video_id!r} view {view}: rows {row0}..{row0 + n} arrived, expected rows from "
                f"{v.received} (of {v.n_rows}) in order"
            )
        for name, col in columns.items():
            key = f"{view}/{name}"
            v.crcs[key] = zlib.crc32(np.ascontiguousarray(col).view(np.uint8).data,
                                     v.crcs.get(key, zlib.crc32(key.encode())))  # fmt: skip
            self._arrays[name].put(v.row_start + row0, col)
        v.received += n

    def end(self, video_id: str) -> None:
        """Every row of the video has arrived: commit it as soon as its rows are on disk."""
        opened = self._open.pop(video_id)
        short = [(view, v.received, v.n_rows) for view, v in opened.views.items() if v.received != v.n_rows]
        if short:
            raise StoreError(f"video {video_id!r}: views got fewer rows than reserved ({short})")
        video = opened.video
        record = {
            "id": video.id,
            "label": int(video.label),
            "source": video.source,
            "fps": float(video.fps),
            "num_frames": int(video.num_frames),
            "views": [
                {"view": view, "row_start": v.row_start, "n_rows": v.n_rows, **v.meta}
                for view, v in sorted(opened.views.items())
            ],  # fmt: skip
            "meta": video.meta,
        }
        crcs = {k: f"{c:08x}" for v in opened.views.values() for k, c in v.crcs.items()}
        digest = codecs.video_digest(codecs.record_header(record), crcs)
        record["checksum"] = {"algo": codecs.DIGEST_ALGO, "value": digest, "columns": crcs}
        self._pending.append(record)
        if time.monotonic() - self._last_commit > self.commit_interval_s:
            self.flush()
        else:
            self._commit_durable()

    def abandon(self, video_id: str) -> None:
        """Forget an open video (its decoder failed): its reserved rows stay unused, nothing is committed."""
        if self._open.pop(video_id, None) is not None:
            self._seen.discard(video_id)

    def fail(self, video_id: str, source: str, stage: str, error: str) -> None:
        write_log_line(
            self.dir / layout.FAILURES_FILE,
            {"id": video_id, "source": source, "stage": stage, "error": error[:2000], "time": time.time()},
        )

    def flush(self) -> None:
        """Write every buffered row (partial shards included) and commit what is complete."""
        for arr in self._arrays.values():
            arr.flush()
        self._commit_durable()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        if self._lock is None:
            return
        self.flush()
        self._lock.unlink(missing_ok=True)
        self._lock = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------
    def _columns(
        self, video_id: str, view: int, tensors: dict[str, Any], time_s: Any, frame_index: Any, padded: Any
    ) -> dict[str, np.ndarray]:
        n = len(time_s)
        cols: dict[str, np.ndarray] = {
            "time_s": np.asarray(time_s, dtype=np.float64),
            "frame_index": np.asarray(frame_index, dtype=np.int64),
            "padded": np.zeros(n, bool) if padded is None else np.asarray(padded, dtype=bool),
        }
        missing = [t.name for t in self.spec.tensors if t.name not in tensors]
        if missing:
            raise StoreMismatchError(f"video {video_id!r} view {view} lacks tensors {missing}")
        for t in self.spec.tensors:
            cols.update(_stored_form(t, tensors[t.name], n, video_id))
        for name, col in cols.items():
            if len(col) != n:
                raise StoreMismatchError(
                    f"video {video_id!r} view {view}: {name} has {len(col)} rows, "
                    f"expected {n} (one per stored frame)"
                )
        return cols

    def _commit_durable(self) -> None:
        """Append the commit line of every finished video whose rows are all on disk."""
        waiting = []
        for record in self._pending:
            spans = [(v["row_start"], v["row_start"] + v["n_rows"]) for v in record["views"]]
            if all(a.durable(lo, hi) for a in self._arrays.values() for lo, hi in spans):
                write_log_line(self.dir / layout.COMMITS_FILE, record)
                self._committed.add(record["id"])
            else:
                waiting.append(record)
        self._pending = waiting

    def _resume(self) -> tuple[set[str], int]:
        records, _ = read_log(self.dir / layout.COMMITS_FILE, repair=True)
        videos = [r for r in records if "retract" not in r]  # retractions (dedupe) hold no rows
        end = max((v["row_start"] + v["n_rows"] for r in videos for v in r["views"]), default=0)
        for arr in self._arrays.values():
            arr.reset(end)
        return {r["id"] for r in videos}, end

    def _refuse_other_splits(self) -> None:
        """Parts of another split scheme may hold the same videos: their writers must not run with ours."""
        mine = locks.split_of(self.part)
        others = [w for part, w in locks.live_writers(self.path).items() if locks.split_of(part) != mine]
        if others:
            raise StoreError(
                f"{self.path} is being written by another extraction with another split of the videos "
                f"({'; '.join(others)}), which may write the same videos as this one (part {self.part}). "
                "Wait for it to end, or run the same split (the same --part N, or the same cluster.parts)."
            )

    def _committed_elsewhere(self) -> dict[str, str]:
        parts = self.path / layout.PARTS_GROUP
        out: dict[str, str] = {}
        for log in sorted(parts.glob(f"*/{layout.COMMITS_FILE}")):
            if log.parent.name != self.part:
                records = read_log(log)[0]
                retracted = {r["retract"] for r in records if "retract" in r}
                out |= {r["id"]: log.parent.name for r in records if "id" in r and r["id"] not in retracted}
        return out


def _stored_form(t: TensorSpec, value: Any, n: int, video_id: str) -> dict[str, np.ndarray]:
    """The arrays a tensor is stored as: float16 values, or int8 values plus a float16 scale."""
    if t.quantised:
        q, scale = value if isinstance(value, tuple) else codecs.quantise_int8(value)
        q, scale = _to_numpy(q).astype(np.int8, copy=False), _to_numpy(scale).astype(np.float16, copy=False)
        out = {t.name: q, t.name + layout.SCALE_SUFFIX: scale}
    else:
        out = {t.name: _to_numpy(value).astype(np.float16, copy=False)}
    if tuple(out[t.name].shape[1:]) != t.shape:
        raise StoreMismatchError(
            f"video {video_id!r}: tensor {t.name} has per-frame shape "
            f"{tuple(out[t.name].shape[1:])}, the store expects {t.shape}"
        )
    return out


def _to_numpy(x: Any) -> np.ndarray:
    if codecs._is_torch(x):
        x = x.detach().cpu()
        return x.numpy() if str(x.dtype) != "torch.bfloat16" else x.float().numpy()
    return np.asarray(x)


def _open_arrays(
    group: zarr.Group, spec: StoreSpec, compression: str, shard_bytes: int, crc: bool, part_dir: Path
) -> dict[str, RowArray]:
    wanted: dict[str, tuple[tuple[int, ...], str, tuple[str, ...]]] = {
        name: ((), dtype, ("row",)) for name, dtype in layout.ROW_ARRAYS.items()
    }
    for t in spec.tensors:
        wanted[t.name] = (t.shape, t.dtype, layout.tensor_dims(t.name, t.kind, len(t.shape)))
        if t.quantised:
            wanted[t.name + layout.SCALE_SUFFIX] = (
                t.shape[:-1],
                "float16",
                layout.scale_dims(t.name, t.kind, len(t.shape) - 1),
            )
    arrays = {}
    for name, (shape, dtype, dims) in wanted.items():
        arrays[name] = RowArray.open_or_create(
            group, name, shape, dtype, dims, compression, shard_bytes, crc, array_dir=part_dir / name
        )
    return arrays
