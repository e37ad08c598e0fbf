"""Checking and summarising a store: ``verify`` (checksums, NaN/Inf), ``inspect``, ``finalize``."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import zarr

from store import codecs, layout
from store.errors import StoreCorruptError
from store.reader import FeatureStore
from store.writer import set_complete


def verify(path: str | os.PathLike[str], progress: Any = None) -> list[dict[str, str]]:
    """Recompute every committed video's checksum and scan its values for NaN/Inf.

    Returns one ``{"id", "problem"}`` per bad video (an empty list means the store is sound); log lines
    that fail their own CRC are reported too.
    """
    fs = FeatureStore(path)
    problems = [{"id": "-", "problem": p} for p in fs.log_problems]
    for rec in fs.videos:
        try:
            problem = _check_video(fs, rec)
        except StoreCorruptError as e:
            problem = str(e)
        if problem:
            problems.append({"id": rec.id, "problem": problem})
        if progress is not None:
            progress.update(1)
    return problems


def _check_video(fs: FeatureStore, rec: Any) -> str | None:
    checksum, nonfinite = codecs.Checksum(), []
    stored = sorted([*layout.ROW_ARRAYS, *_stored_names(fs)])
    for view, (start, n) in sorted(rec.views.items()):
        for name in stored:
            values = fs.read_raw(rec.part, name, start, start + n)
            if len(values) != n:
                return f"view {view}: {name} has {len(values)} rows on disk, the index says {n}"
            checksum.update(f"{view}/{name}", values)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                nonfinite.append(f"{name} (view {view})")
    if checksum.hexdigest() != rec.checksum:
        return "checksum mismatch: the stored bytes changed after they were committed"
    if nonfinite:
        return "NaN/Inf values in " + ", ".join(nonfinite)
    return None


def _stored_names(fs: FeatureStore) -> list[str]:
    names = []
    for t in fs.spec.tensors:
        names.append(t.name)
        if t.quantised:
            names.append(t.name + layout.SCALE_SUFFIX)
    return names


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything a user asks about a store, as one JSON-able dict."""
    fs = FeatureStore(path)
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
