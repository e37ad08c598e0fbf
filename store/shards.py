"""The shards of a row array, encoded here byte for byte in the format of zarr's ``sharding_indexed``
codec: a write costs an encode and one file write (zarr-python's write path ran at ~0.7 of a plain file
write here; benchmarks/store_io.py). Reads of local stores go through :class:`ShardReader`: one read per
run of back-to-back chunks on a descriptor kept open (zarr's pipelines, zarrs included, open the file
and read once per chunk, which restarts the kernel's readahead every time: cold sequential reads ran at
0.2-0.45 of a plain file read); remote stores and other codec chains go through zarr.

    rows [shard_rows, *shape] --split into inner chunks of chunk_rows rows-->
        each chunk: bytes (C order, little endian) -> blosc (cname, clevel, shuffle) -> [crc32c]
    shard file = chunk_0 | chunk_1 | ... | index, index = uint64 (offset, nbytes) per chunk (2^64-1 pairs
        for chunks holding no row yet), little endian, + crc32c of the index (4 bytes)

Only the codec chains this store creates are encoded here (``ShardCodec.for_array`` says None for
anything else, and the caller goes through zarr). zarr, zarrs, dask and xarray read the same files;
``tests/store/test_shards.py`` checks that they read what this writes.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np

EMPTY = np.uint64(2**64 - 1)
_SHUFFLE = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE}  # fmt: skip


def _crc32c(data: Any) -> bytes:
    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()


@dataclass(frozen=True)
class ShardCodec:
    """Encodes ``[shard_rows, *shape]`` row blocks of one array into shard files."""

    chunk_rows: int
    shard_rows: int
    blosc: Any | None  # numcodecs.Blosc, or None for no compression
    chunk_crc: bool

    @classmethod
    def for_array(cls, metadata: dict[str, Any]) -> ShardCodec | None:
        """The codec for an array's ``zarr.json`` metadata, or None when its codecs are not ours."""
        try:
            (codec,) = metadata["codecs"]
            config = codec["configuration"]
            if codec["name"] != "sharding_indexed" or config.get("index_location", "end") != "end":
                return None
            index_codecs = [c["name"] for c in config["index_codecs"]]
            inner = config["codecs"]
            chunk_rows = int(config["chunk_shape"][0])
            shard_rows = int(metadata["chunk_grid"]["configuration"]["chunk_shape"][0])
        except (KeyError, TypeError, ValueError):
            return None
        endian = dict(inner[0]).get("configuration", {}).get("endian", "little")  # 1-byte types: none
        if index_codecs != ["bytes", "crc32c"] or inner[0]["name"] != "bytes" or endian != "little":
            return None
        rest, blosc, crc = list(inner[1:]), None, False
        if rest and rest[0]["name"] == "blosc":
            b = rest.pop(0)["configuration"]
            blosc = numcodecs.Blosc(cname=b["cname"], clevel=int(b["clevel"]), shuffle=_SHUFFLE[b["shuffle"]],
                                    blocksize=int(b.get("blocksize", 0)))  # fmt: skip
        if rest and rest[0]["name"] == "crc32c":
            rest.pop(0)
            crc = True
        if rest:
            return None
        return cls(chunk_rows, shard_rows, blosc, crc)

    def encode(self, rows: np.ndarray, filled_rows: int) -> list[Any]:
        """The shard file for ``rows`` ([shard_rows, *shape]) as buffers to write one after another (no
        copy into one buffer); chunks past ``filled_rows`` hold nothing."""
        n_chunks = -(-self.shard_rows // self.chunk_rows)
        index = np.full((n_chunks, 2), EMPTY, dtype="<u8")
        parts: list[Any] = []
        offset = 0
        for c in range(n_chunks):
            lo = c * self.chunk_rows
            if lo >= filled_rows:
                break
            data: Any = _chunk(rows[lo : lo + self.chunk_rows], self.chunk_rows)
            if self.blosc is not None:
                data = self.blosc.encode(data)  # bytes
            size = memoryview(data).nbytes
            parts.append(data)
            if self.chunk_crc:
                parts.append(_crc32c(data if isinstance(data, bytes) else data.tobytes()))
                size += 4
            index[c] = (offset, size)
            offset += size
        index_bytes = index.tobytes()
        return [*parts, index_bytes, _crc32c(index_bytes)]


def _chunk(block: np.ndarray, chunk_rows: int) -> np.ndarray:
    """A chunk's rows, C-contiguous and little endian, padded with the fill value (0) to a whole chunk."""
    if len(block) < chunk_rows:
        padded = np.zeros((chunk_rows, *block.shape[1:]), dtype=block.dtype)
        padded[: len(block)] = block
        block = padded
    return np.ascontiguousarray(block.astype(block.dtype.newbyteorder("<"), copy=False))


def write_atomically(path: Path, buffers: list[Any]) -> None:
    """Write a file whole or not at all (a killed writer never leaves a torn shard behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        for buffer in buffers:
            f.write(buffer)
    os.replace(tmp, path)


def shard_path(array_dir: Path, shard: int, ndim: int) -> Path:
    """``c/<shard>/0/0`` (zarr v3 default chunk keys, "/" separator): rows shard along axis 0 only."""
    return array_dir.joinpath("c", str(shard), *(["0"] * (ndim - 1)))


class ShardReader:
    """Rows of one local sharded row array, read the way they were written: per shard, the index once
    (again when the file is replaced), then **one** ``pread`` per contiguous run of inner chunks on a file
    descriptor kept open, and the chunks decoded into the output.

    zarr's codec pipelines (zarrs and zarr-python alike) open the shard file and issue one read per inner
    chunk; each fresh descriptor starts the kernel's readahead over, so cold sequential reads ran at
    0.2-0.3 of a plain file read of the same bytes (BENCHMARKS.md, "Store I/O"). Only the codec chains
    :class:`ShardCodec` describes are read here (else the caller uses zarr); a chunk that fails to
    decode, a bad index or chunk crc32c raises ``ValueError`` (the caller reports corruption).
    """

    def __init__(self, array_dir: Path, codec: ShardCodec, row_shape: tuple[int, ...], dtype: Any) -> None:
        self.dir, self.codec = array_dir, codec
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype).newbyteorder("<")
        self.n_chunks = -(-codec.shard_rows // codec.chunk_rows)
        self._open: dict[int, tuple[int, tuple[int, int, int], np.ndarray]] = {}  # shard -> fd, stat, index
        self._lock = threading.Lock()  # several threads may read one array at once
        self._retired: list[int] = []  # descriptors of replaced files, closed with the reader

    def close(self) -> None:
        with self._lock:
            for fd in [*(fd for fd, _, _ in self._open.values()), *self._retired]:
                os.close(fd)
            self._open.clear()
            self._retired.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown: nothing left to release
            pass

    def _shard(self, shard: int) -> tuple[int, np.ndarray] | None:
        """(fd, index [n_chunks, 2]) of a shard file, reopened when it was replaced; None if absent."""
        with self._lock:
            return self._shard_locked(shard)

    def _shard_locked(self, shard: int) -> tuple[int, np.ndarray] | None:
        path = shard_path(self.dir, shard, 1 + len(self.row_shape))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._open.get(shard)
        if cached is not None and cached[1] == key:
            return cached[0], cached[2]
        if cached is not None:  # replaced: another thread may still be reading the old descriptor
            self._retired.append(cached[0])
            del self._open[shard]
        fd = os.open(path, os.O_RDONLY)
        try:
            size = self.n_chunks * 16 + 4
            raw = os.pread(fd, size, st.st_size - size)
            if len(raw) != size or _crc32c(raw[:-4]) != raw[-4:]:
                raise ValueError(f"shard {path}: its index fails its crc32c (or the file is truncated)")
            index = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.n_chunks, 2)
        except BaseException:
            os.close(fd)
            raise
        self._open[shard] = (fd, key, index)
        return fd, index

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` ``[n, *row_shape]``; rows no shard holds are 0 (the fill value)."""
        out = np.empty((max(stop - start, 0), *self.row_shape), dtype=self.dtype)
        sr, cr = self.codec.shard_rows, self.codec.chunk_rows
        for shard in range(start // sr, (stop - 1) // sr + 1 if stop > start else start // sr):
            a, b = max(start, shard * sr) - shard * sr, min(stop, (shard + 1) * sr) - shard * sr
            base = shard * sr - start  # shard row r is out[base + r]
            opened = self._shard(shard)
            if opened is None:
                out[base + a : base + b] = 0
                continue
            fd, index = opened
            chunks = []
            for c in range(a // cr, (b - 1) // cr + 1):
                if index[c, 0] == EMPTY:
                    out[base + max(a, c * cr) : base + min(b, (c + 1) * cr)] = 0
                else:
                    chunks.append(c)
            for run in _runs(chunks, index):
                self._read_run(fd, index, run, out, base, a, b)
        return out

    def _read_run(
        self, fd: int, index: np.ndarray, run: list[int], out: np.ndarray, base: int, a: int, b: int
    ) -> None:
        """One run of back-to-back chunks: a single read (straight into ``out`` when nothing needs
        decoding or cutting), then each chunk decoded into its rows of ``out``."""
        cr = self.codec.chunk_rows
        lo, hi = int(index[run[0], 0]), int(index[run[-1], 0] + index[run[-1], 1])
        whole = a <= run[0] * cr and (run[-1] + 1) * cr <= b
        if whole and self.codec.blosc is None and not self.codec.chunk_crc:
            target = out[base + run[0] * cr : base + (run[-1] + 1) * cr]
            if os.preadv(fd, [memoryview(target.data).cast("B")], lo) != hi - lo:
                raise ValueError(f"{hi - lo} bytes at {lo}: the shard file is truncated")
            return
        buf = os.pread(fd, hi - lo, lo)
        if len(buf) != hi - lo:
            raise ValueError(f"{len(buf)} of {hi - lo} bytes at {lo}: the shard file is truncated")
        view = memoryview(buf)
        for c in run:
            data = view[int(index[c, 0]) - lo :][: int(index[c, 1])]
            r0, r1 = max(a, c * cr), min(b, (c + 1) * cr)
            if r0 == c * cr and r1 == (c + 1) * cr:  # a whole chunk: decoded in place
                self._decode(data, out[base + r0 : base + r1])
            else:
                out[base + r0 : base + r1] = self._decode(data)[r0 - c * cr : r1 - c * cr]

    def _decode(self, data: memoryview, into: np.ndarray | None = None) -> np.ndarray:
        """One inner chunk's rows ``[chunk_rows, *row_shape]`` (written into ``into`` when given)."""
        if self.codec.chunk_crc:
            data, crc = data[:-4], bytes(data[-4:])
            if _crc32c(bytes(data)) != crc:
                raise ValueError("an inner chunk fails its crc32c")
        shape = (self.codec.chunk_rows, *self.row_shape)
        if self.codec.blosc is not None:
            if into is not None:
                self.codec.blosc.decode(data, out=into)
                return into
            data = memoryview(self.codec.blosc.decode(data))
        rows = np.frombuffer(data, dtype=self.dtype).reshape(shape)
        if into is not None:
            into[...] = rows
        return rows


def _runs(chunks: list[int], index: np.ndarray) -> list[list[int]]:
    """Chunks grouped into runs that lie back to back in the file (one read each)."""
    runs: list[list[int]] = []
    for c in chunks:
        if runs and int(index[runs[-1][-1], 0] + index[runs[-1][-1], 1]) == int(index[c, 0]):
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs
