"""Checking, mending and summarising a store: ``verify``, ``dedupe``, ``inspect``, ``finalize``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from store import codecs, layout, locks
from store.errors import StoreCorruptError, StoreError
from store.index import write_log_line
from store.reader import FeatureStore
from store.writer import set_complete


def verify(path: str | os.PathLike[str], progress: Any = None) -> list[dict[str, str]]:
    """Everything that can be wrong with a store, one ``{"id", "problem"}`` each (empty: the store is sound).

    Checked: every committed video's checksums (data, label and row pointers) and NaN/Inf values; commit
    log lines that fail their own CRC; ids committed by two parts; the commit logs against the index
    ``finalize`` wrote (a deleted or truncated log); rows on disk that no commit log accounts for; every
    array's metadata (dtype, per-frame shape, codecs) against what the store's attributes declare.
    """
    fs = FeatureStore(path, allow_duplicates=True)
    problems = [{"id": "-", "problem": p} for p in fs.log_problems]
    problems += [
        {
            "id": vid,
            "problem": f"committed by {len(parts)} parts ({', '.join(parts)}); `twostage dedupe` fixes it",
        }
        for vid, parts in fs.duplicates.items()
    ]
    problems += [{"id": "-", "problem": p} for p in _structure_problems(fs)]
    for rec in fs.videos:
        try:
            found = fs.check(rec)
        except StoreCorruptError as e:
            found = [str(e)]
        if found:
            problems.append({"id": rec.id, "problem": "; ".join(found)})
        if progress is not None:
            progress.update(1)
    return problems


def _structure_problems(fs: FeatureStore) -> list[str]:
    """Commit logs against the index and the arrays; array metadata against the attributes."""
    problems: list[str] = []
    group = zarr.open_group(store=fs.path, mode="r", use_consolidated=False)
    for part in fs.parts():
        part_group = group[layout.part_path(part)]
        for name, (shape, dtype) in _expected_arrays(fs).items():
            problem = _array_problem(part_group, name, shape, dtype, fs.spec.storage)
            if problem:
                problems.append(f"part {part}: {problem}")
        rows = _rows_on_disk(part_group)
        if rows > 0 and fs.log_lines.get(part, 0) == 0:
            problems.append(
                f"part {part} holds {rows} rows but its {layout.COMMITS_FILE} is missing or empty: its "
                "videos are invisible; restore the log, or extract them again"
            )
    return problems + _index_problems(fs, group)


def _expected_arrays(fs: FeatureStore) -> dict[str, tuple[tuple[int, ...], str]]:
    out: dict[str, tuple[tuple[int, ...], str]] = {name: ((), d) for name, d in layout.ROW_ARRAYS.items()}
    for t in fs.spec.tensors:
        out[t.name] = (t.shape, "int8" if t.quantised else "float16")
        if t.quantised:
            out[t.name + layout.SCALE_SUFFIX] = (t.shape[:-1], "float16")
    return out


def _array_problem(
    part_group: Any, name: str, shape: tuple[int, ...], dtype: str, storage: dict[str, Any]
) -> str | None:
    if name not in part_group:
        return None  # a part that never wrote a row has no arrays yet
    array = part_group[name]
    if str(array.dtype) != np.dtype(dtype).name:
        return (
            f"array {name} is stored as {array.dtype}, the store declares {dtype} (its zarr.json was edited)"
        )
    if tuple(array.shape[1:]) != tuple(shape):
        return f"array {name} has per-frame shape {tuple(array.shape[1:])}, the store declares {shape}"
    want = codecs.compressors(storage.get("compression", "lz4"), np.dtype(dtype).itemsize,
                              crc=bool(storage.get("chunk_crc", False)))  # fmt: skip
    have, declared = [type(c).__name__ for c in array.compressors], [type(c).__name__ for c in want]
    if have != declared:
        return f"array {name} is compressed with {have}, the store declares {declared}"
    return None


def _rows_on_disk(part_group: Any) -> int:
    rows = [int(part_group[name].shape[0]) for name in layout.ROW_ARRAYS if name in part_group]
    return max(rows, default=0)


def _index_problems(fs: FeatureStore, group: Any) -> list[str]:
    """The columnar index ``finalize`` wrote must list exactly the committed (id, part) pairs."""
    if layout.INDEX_GROUP not in group or "video_id" not in group[layout.INDEX_GROUP]:
        return []
    index = group[layout.INDEX_GROUP]
    indexed = set(zip(index["video_id"][:].tolist(), index["part"][:].tolist(), strict=True))
    logged = {(v.id, v.part) for v in fs.videos}
    missing, extra = indexed - logged, logged - indexed
    out = []
    if missing:
        parts = sorted({p for _, p in missing})
        out.append(
            f"{len(missing)} indexed videos have no commit line (parts {', '.join(parts)}): a commit log was "
            "deleted or truncated; restore it, or extract those videos again"
        )
    if extra and fs.complete:
        out.append(f"{len(extra)} committed videos are missing from the index; run `twostage commit` again")
    return out


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything a user asks about a store, as one JSON-able dict."""
    fs = FeatureStore(path, allow_duplicates=True)
    frames = sum(n for v in fs.videos for _, n in v.views.values())
    return {
        "path": str(path),
        "format": {
            "name": fs.attrs["format"],
            "version": fs.attrs["version"],
            "package_version": fs.attrs.get("package_version"),
        },
        "complete": fs.complete,
        "completion": fs.attrs.get("complete"),
        "videos": len(fs.videos),
        "views": sum(len(v.views) for v in fs.videos),
        "frames": frames,
        "classes": list(fs.classes),
        "parts": fs.parts(),
        "backbone": fs.backbone,
        "sampling": fs.spec.sampling,
        "tensors": [t.to_json() for t in fs.spec.tensors],
        "bytes_per_frame": {
            "total": fs.spec.bytes_per_frame,
            **{t.name: t.bytes_per_frame for t in fs.spec.tensors},
        },
        "disk_bytes": _disk_bytes(fs.path),
        "failures": [{k: f.get(k) for k in ("id", "source", "stage", "error")} for f in fs.failures],
        "log_problems": fs.log_problems,
        "duplicates": fs.duplicates,
    }


def _disk_bytes(path: str) -> int | None:
    if "://" in path:
        return None
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def finalize(path: str | os.PathLike[str], summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Coordinator only: write the columnar ``index/`` group and mark the store complete."""
    fs = FeatureStore(path)
    rows = [(v, view, start, n) for v in fs.videos for view, (start, n) in sorted(v.views.items())]
    columns = {
        "video_id": np.array([r[0].id for r in rows], dtype=np.dtypes.StringDType()),
        "part": np.array([r[0].part for r in rows], dtype=np.dtypes.StringDType()),
        "label": np.array([r[0].label for r in rows], dtype=np.int32),
        "view": np.array([r[1] for r in rows], dtype=np.int32),
        "row_start": np.array([r[2] for r in rows], dtype=np.int64),
        "n_rows": np.array([r[3] for r in rows], dtype=np.int64),
        "fps": np.array([r[0].fps for r in rows], dtype=np.float64),
    }
    group = zarr.open_group(store=str(path), mode="r+", use_consolidated=False)
    index = group.require_group(layout.INDEX_GROUP)
    for name, values in columns.items():
        if len(values) == 0:
            values = values.astype(object if values.dtype.kind == "T" else values.dtype)[:0]
        index.create_array(
            name,
            data=values if len(values) else np.zeros(0, dtype="int64"),
            overwrite=True,
            dimension_names=("entry",),
        )
    done = {"videos": len(fs.videos), "failures": len(fs.failures), "time": time.time(), **(summary or {})}
    set_complete(path, done)
    return done


def dedupe(path: str | os.PathLike[str]) -> dict[str, str]:
    """Keep one copy of every id that several parts committed; returns ``{id: part kept}``.

    The kept copy is the first (by part name) whose bytes pass their checksums; every other copy gets a
    retraction line appended to its part's commit log (rows stay on disk, invisible). Refused while any
    part is being written.
    """
    root = Path(path)
    with locks.store_admin(root):
        writers = locks.live_writers(root)
        if writers:
            raise StoreError(
                f"{root} is being written ({'; '.join(writers.values())}); dedupe it once that ends"
            )
        fs = FeatureStore(root, allow_duplicates=True)
        kept: dict[str, str] = {}
        for vid in sorted(fs.duplicates):
            copies = [v for v in fs.videos if v.id == vid]
            sound = [v for v in copies if not fs.check(v)]
            keep = (sound or copies)[0]
            kept[vid] = keep.part
            for v in copies:
                if v is not keep:
                    write_log_line(
                        root / layout.part_path(v.part) / layout.COMMITS_FILE,
                        {"retract": vid, "reason": f"duplicate of part {keep.part}", "time": time.time()},
                    )
    return kept
