"""A row-appendable sharded Zarr array with one writer: whole shards at a time, partial ones on flush.

Zarr writes a shard as one object (a partial write is a read-modify-write of the whole shard), so the
appender keeps the rows of the current, unfinished shard in memory and writes each shard once it is
full. ``flush_partial`` writes the unfinished shard's rows so far (and keeps them, so the next flush
rewrites the whole shard region from memory, never from a read-back).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from store import codecs


class RowArray:
    """Appends rows to ``array`` (shape ``[rows, *shape]``) and tracks how many are on disk."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.shard_rows = int(array.shards[0]) if array.shards else int(array.chunks[0])
        self._buf: list[np.ndarray] = []
        self._buf_rows = 0
        self._buf_start = 0  # first row held in the buffer; always a multiple of shard_rows
        self.written = 0  # rows [0, written) are on disk

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
    ) -> RowArray:
        if name in group:
            array = group[name]
            if not isinstance(array, zarr.Array):
                raise ValueError(f"{group.path}/{name} is a group where the store expects an array")
            if tuple(array.shape[1:]) != tuple(shape) or str(array.dtype) != np.dtype(dtype).name:
                raise ValueError(
                    f"array {array.path} is {array.shape[1:]}/{array.dtype}, expected {shape}/{dtype}"
                )
            return cls(array)  # type: ignore[arg-type]
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
        return cls(array)

    def reset(self, committed_end: int) -> None:
        """Resume after ``committed_end`` rows: reload the open shard's committed rows, drop the rest."""
        start = (committed_end // self.shard_rows) * self.shard_rows
        self._buf = [np.asarray(self.array[start:committed_end])] if committed_end > start else []
        self._buf_rows = committed_end - start
        self._buf_start = start
        if self.array.shape[0] != committed_end:
            self.array.resize((committed_end, *self.array.shape[1:]))
        self.written = committed_end

    def append(self, rows: Any) -> None:
        rows = np.asarray(rows)
        self._buf.append(rows)
        self._buf_rows += len(rows)
        while self._buf_rows >= self.shard_rows:
            data = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
            self._write(self._buf_start, data[: self.shard_rows])
            rest = data[self.shard_rows :]
            self._buf, self._buf_rows = ([rest] if len(rest) else []), len(rest)
            self._buf_start += self.shard_rows

    def flush_partial(self) -> None:
        if not self._buf_rows or self.written >= self._buf_start + self._buf_rows:
            return
        data = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        self._buf = [data]
        self._write(self._buf_start, data)

    def _write(self, start: int, data: np.ndarray) -> None:
        end = start + len(data)
        if self.array.shape[0] < end:
            self.array.resize((end, *self.array.shape[1:]))
        self.array[start:end] = data
        self.written = max(self.written, end)
