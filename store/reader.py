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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from store import codecs, layout
from store.errors import NotAStoreError, StoreCorruptError, StoreError, StoreMismatchError
from store.index import read_log
from store.schema import StoreSpec, TensorSpec, check_format


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

    def rows(self, view: int = 0) -> int:
        return self.views[view][1]


class FeatureStore:
    """Read-only view of a store on local disk or at any fsspec URL. Picklable (for loader workers)."""

    def __init__(self, path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.storage_options = storage_options
        self._group: zarr.Group | None = None
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
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
        state["_group"], state["_arrays"] = None, {}
        return state

    def refresh(self) -> None:
        """Re-read the commit and failure logs of every part."""
        videos, failures, self.log_problems = [], {}, []
        for part in self.parts():
            records, bad = read_log(self._join(layout.part_path(part), layout.COMMITS_FILE))
            self.log_problems += [
                f"{part}/{layout.COMMITS_FILE} line {n}: unreadable (checksum)" for n in bad
            ]
            videos += [_record(part, r) for r in records]
            for f in read_log(self._join(layout.part_path(part), layout.FAILURES_FILE))[0]:
                failures[f["id"]] = f | {"part": part}
        videos.sort(key=lambda v: v.id)
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

    # -- reading ----------------------------------------------------------------------------------
    def array(self, part: str, name: str) -> zarr.Array:
        key = (part, name)
        if key not in self._arrays:
            self._arrays[key] = self._open_group()[layout.array_path(part, name)]  # type: ignore[assignment]
        return self._arrays[key]

    def read_raw(self, part: str, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(self.array(part, name)[start:stop])
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
    ) -> dict[str, np.ndarray]:
        """A batch of clips ``(video, view, frame indices)`` of equal length: ``{name: [B, T, *shape]}``."""
        names = self._names(tensors)
        per_clip = [self.read(v, view, np.asarray(idx), names, dtype=dtype) for v, view, idx in clips]
        lengths = {len(next(iter(c.values()))) for c in per_clip}
        if len(lengths) > 1:
            raise StoreError(f"clips in one batch must have equal lengths, got {sorted(lengths)}")
        return {name: np.stack([c[name] for c in per_clip]) for name in names}

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
            values = self.read_raw(part, name, start + lo, start + hi)[idx - lo]
            if t.quantised and dequantise:
                scale = self.read_raw(part, name + layout.SCALE_SUFFIX, start + lo, start + hi)[idx - lo]
                values = codecs.dequantise_int8(values, scale, dtype)
            elif dequantise:
                values = values.astype(dtype, copy=False)
            out[name] = values
        return out


def _record(part: str, r: dict[str, Any]) -> VideoRecord:
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
        checksum=r["checksum"]["value"],
        meta=r.get("meta", {}),
        view_meta=view_meta,
    )
