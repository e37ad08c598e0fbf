"""The shards of a row array, encoded here byte for byte in the format of zarr's ``sharding_indexed``
codec: a write costs an encode and one file write (zarr-python's write path ran at ~0.7 of a plain file
write here; benchmarks/store_io.py). Reads go through zarr's codec pipeline (zarrs), which was faster
than a hand-written reader.

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
