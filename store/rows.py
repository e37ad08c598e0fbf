"""A sharded Zarr row array with one writer: rows put at any reserved position, whole shards written.

Zarr writes a shard as one object (a partial write is a read-modify-write of the whole shard), so the
writer keeps each unfinished shard's rows in memory and writes the shard once every one of its rows has
arrived; ``flush`` writes the unfinished ones as they are (keeping their rows, so a later write rewrites
the whole shard from memory, never from a read-back). Rows may arrive for several reserved ranges at once
(two long videos extracted side by side each stream into their own rows): memory is bounded by the open
shards, not by the videos' lengths.

Shard files are encoded here (``store/shards.py``) and replaced atomically; arrays whose codecs this
store did not create are written through zarr instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from store import codecs
from store.shards import ShardCodec, shard_path, write_atomically


@dataclass
class _Shard:
    """An unfinished shard: its rows so far, which are filled, which are on disk."""

    rows: np.ndarray  # [shard_rows, *shape]
    filled: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # [shard_rows]
    on_disk: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # [shard_rows]


class RowArray:
    """Rows of ``array`` (shape ``[rows, *shape]``) put by position; knows which rows are on disk."""

    def __init__(self, array: zarr.Array, array_dir: Path | None = None) -> None:
        self.array = array
        self.shard_rows = int(array.shards[0]) if array.shards else int(array.chunks[0])
        self.row_shape, self.dtype = tuple(array.shape[1:]), np.dtype(array.dtype)
        self.dir = array_dir
        self.encoder = ShardCodec.for_array(array.metadata.to_dict()) if array_dir is not None else None
        self._open: dict[int, _Shard] = {}  # shard number -> unfinished shard
        self._done_below = 0  # every row below this is on disk (shards before it are complete)
        self._complete: set[int] = set()  # shards at or above _done_below written whole
        self._shape_rows = int(array.shape[0])

    @classmethod
    def open_or_create(
        cls,
        group: zarr.Group,
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        dims: tuple[str, ...],
        compression: str,
        shard_bytes: int,
        crc: bool = False,
        array_dir: Path | None = None,
    ) -> RowArray:
        if name in group:
            array = group[name]
            if not isinstance(array, zarr.Array):
                raise ValueError(f"{group.path}/{name} is a group where the store expects an array")
            if tuple(array.shape[1:]) != tuple(shape) or str(array.dtype) != np.dtype(dtype).name:
                raise ValueError(
                    f"array {array.path} is {array.shape[1:]}/{array.dtype}, expected {shape}/{dtype}"
                )
            return cls(array, array_dir)  # type: ignore[arg-type]
        row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        chunk = codecs.rows_per_chunk(
            row_bytes, min(1 << 20, shard_bytes)
        )  # a chunk never outgrows its shard
        shard = codecs.rows_per_shard(row_bytes, chunk, shard_bytes)
        array = group.create_array(
            name,
            shape=(0, *shape),
            dtype=dtype,
            chunks=(chunk, *shape),
            shards=(shard, *shape),
            compressors=codecs.compressors(compression, np.dtype(dtype).itemsize, crc=crc),
            fill_value=0,
            dimension_names=dims,
            config={"write_empty_chunks": True},
        )
        return cls(array, array_dir)

    # -- writing ------------------------------------------------------------------------------------
    def reset(self, committed_end: int) -> None:
        """Resume after ``committed_end`` rows: reload the open shard's committed rows, drop the rest."""
        start = (committed_end // self.shard_rows) * self.shard_rows
        self._open, self._complete = {}, set()
        if committed_end > start:
            shard = self._new_shard()
            shard.rows[: committed_end - start] = np.asarray(self.array[start:committed_end])
            shard.filled[: committed_end - start] = shard.on_disk[: committed_end - start] = True
            self._open[start // self.shard_rows] = shard
        self._set_shape(committed_end, shrink=True)
        self._done_below = start

    def put(self, start: int, rows: Any) -> None:
        """Rows ``[start, start + len(rows))``; a shard is written as soon as its last row arrives."""
        rows = np.asarray(rows)
        pos, end = start, start + len(rows)
        while pos < end:
            number, offset = divmod(pos, self.shard_rows)
            take = min(end - pos, self.shard_rows - offset)
            shard = self._open.get(number)
            if shard is None:
                shard = self._open[number] = self._new_shard()
            shard.rows[offset : offset + take] = rows[pos - start : pos - start + take]
            shard.filled[offset : offset + take] = True
            if shard.filled.all():
                self._write(number, shard, self.shard_rows)
                del self._open[number]
                self._mark_complete(number)
            pos += take

    def flush(self) -> None:
        """Write every unfinished shard with the rows it has (they stay open for more rows)."""
        for number, shard in sorted(self._open.items()):
            if not np.array_equal(shard.on_disk, shard.filled):
                self._write(number, shard, int(np.flatnonzero(shard.filled).max()) + 1)
                shard.on_disk = shard.filled.copy()

    def durable(self, start: int, stop: int) -> bool:
        """Whether rows ``[start, stop)`` are all on disk."""
        for number in range(start // self.shard_rows, -(-stop // self.shard_rows)):
            if number * self.shard_rows < self._done_below or number in self._complete:
                continue
            shard = self._open.get(number)
            if shard is None:
                return False
            lo = max(start, number * self.shard_rows) - number * self.shard_rows
            hi = min(stop, (number + 1) * self.shard_rows) - number * self.shard_rows
            if not shard.on_disk[lo:hi].all():
                return False
        return True

    # -- internals ----------------------------------------------------------------------------------
    def _new_shard(self) -> _Shard:
        return _Shard(
            rows=np.zeros((self.shard_rows, *self.row_shape), self.dtype),
            filled=np.zeros(self.shard_rows, bool),
            on_disk=np.zeros(self.shard_rows, bool),
        )

    def _write(self, number: int, shard: _Shard, rows_used: int) -> None:
        start = number * self.shard_rows
        self._set_shape(start + rows_used)
        if self.encoder is None or self.dir is None:  # not our codecs: let zarr encode
            self.array[start : start + rows_used] = shard.rows[:rows_used]
            return
        data = self.encoder.encode(shard.rows, rows_used)
        write_atomically(shard_path(self.dir, number, 1 + len(self.row_shape)), data)

    def _mark_complete(self, number: int) -> None:
        self._complete.add(number)
        while self._done_below // self.shard_rows in self._complete:
            self._complete.discard(self._done_below // self.shard_rows)
            self._done_below += self.shard_rows

    def _set_shape(self, rows: int, shrink: bool = False) -> None:
        """Grow (or, on resume, cut) the array's row count; the metadata is written only on a change."""
        if rows > self._shape_rows or (shrink and rows != self._shape_rows):
            self.array.resize((rows, *self.row_shape))
            self._shape_rows = rows
