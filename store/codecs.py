"""Storage codecs: int8 quantisation with a per-token scale, checksums, compressors and chunk sizes.

Quantisation works on numpy arrays and on torch tensors alike (stage one quantises on the device,
before the copy back to the host); dequantisation is what the reader applies.
"""

from __future__ import annotations

import importlib.util
import json
import os
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

COMPRESSIONS = ("zstd", "lz4", "none")
_FP16_TINY = np.float16(2.0**-24)  # the smallest positive float16


def quantise_int8(x: Any) -> tuple[Any, Any]:
    """Symmetric int8 with one float16 scale per token (per vector along the last axis).

    Returns ``(q, scale)`` with ``q`` int8 of ``x``'s shape and ``scale`` float16 of ``x.shape[:-1]``.
    The scale is rounded *up* to float16 so no value clips: ``|x - q * scale| <= scale / 2``.
    Works for numpy arrays and torch tensors (on any device).
    """
    if _is_torch(x):
        import torch

        xf = x.float()
        scale = (xf.abs().amax(dim=-1) / 127.0).to(torch.float16)
        low = scale.float() < xf.abs().amax(dim=-1) / 127.0
        scale = torch.where(low, torch.nextafter(scale, torch.full_like(scale, torch.inf)), scale)
        scale = torch.where(scale == 0, torch.full_like(scale, float(_FP16_TINY)), scale)
        q = torch.round(xf / scale.float().unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
        return q, scale
    xf = np.asarray(x, dtype=np.float32)
    exact = np.abs(xf).max(axis=-1) / np.float32(127.0)
    scale = exact.astype(np.float16)
    low = scale.astype(np.float32) < exact
    scale[low] = np.nextafter(scale[low], np.float16(np.inf))
    scale[scale == 0] = _FP16_TINY
    q = np.clip(np.rint(xf / scale.astype(np.float32)[..., None]), -127, 127).astype(np.int8)
    return q, scale


def dequantise_int8(q: np.ndarray, scale: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    return (q.astype(np.float32) * scale.astype(np.float32)[..., None]).astype(dtype, copy=False)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def configure_zarr() -> None:
    """Faster zarr I/O for this process, unless the user configured zarr themselves.

    The Rust codec pipeline of ``zarrs`` (a declared dependency) decodes shards without zarr-python's
    per-chunk overhead: random clip reads measured 0.71-0.83 of raw disk speed against 0.24-0.35 with the
    default pipeline (benchmarks/store_io.py, BENCHMARKS.md); writes were no faster. More concurrent async
    operations help the default pipeline too, where zarrs is unavailable.
    """
    if "ZARR_CODEC_PIPELINE__PATH" not in os.environ and importlib.util.find_spec("zarrs") is not None:
        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    if "ZARR_ASYNC__CONCURRENCY" not in os.environ:
        zarr.config.set({"async.concurrency": 64})


class Checksum:
    """Chained CRC-32 over named arrays (the exact stored bytes), in the order given.

    CRC-32 (zlib) detects corruption (not tampering) at several GB/s, where blake2b ran at about
    200-350 MB/s here and capped the write path. ``algo`` "crc32" is the first format's whole-video
    checksum (one chain over every column); :func:`video_digest` is the current one ("crc32-v2").
    """

    algo = "crc32"

    def __init__(self) -> None:
        self._crc = 0

    def update(self, name: str, array: np.ndarray) -> None:
        self._crc = zlib.crc32(name.encode(), self._crc)
        self._crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8).data, self._crc)

    def hexdigest(self) -> str:
        return f"{self._crc:08x}"

    @classmethod
    def of(cls, arrays: Iterable[tuple[str, np.ndarray]]) -> str:
        c = cls()
        for name, array in sorted(arrays, key=lambda kv: kv[0]):
            c.update(name, array)
        return c.hexdigest()


DIGEST_ALGO = "crc32-v2"


def column_crc(key: str, array: np.ndarray) -> str:
    """CRC-32 of one stored column (``"{view}/{array name}"`` and its bytes): readers check a column the
    first time they read it, without reading the video's other tensors."""
    c = Checksum()
    c.update(key, array)
    return c.hexdigest()


def video_digest(header: dict[str, Any], columns: dict[str, str]) -> str:
    """The whole-video checksum: the record's identity (id, label, targets, row pointers) and every
    column's CRC, so an edited label or a moved row pointer fails it as a flipped byte does."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":"))
    text += "".join(f"|{key}={columns[key]}" for key in sorted(columns))
    return f"{zlib.crc32(text.encode()):08x}"


def record_header(record: dict[str, Any]) -> dict[str, Any]:
    """What :func:`video_digest` covers of a commit record besides the data: its id, label, row
    pointers and, when it has any, the targets beyond the label (``meta["targets"]``; a record without
    them keeps the digest stores written before targets existed have)."""
    header = {
        "id": record["id"],
        "label": record["label"],
        "views": [[int(v["view"]), int(v["row_start"]), int(v["n_rows"])] for v in record["views"]],
    }
    targets = (record.get("meta") or {}).get("targets")
    return header | ({"targets": targets} if targets else {})


def compressors(compression: str, itemsize: int, level: int | None = None, crc: bool = False) -> list[Any]:
    """Compressor chain for one inner chunk; ``crc`` appends a crc32c so a damaged chunk fails the read.

    Off by default: the per-video checksum (``twostage verify``) catches damage either way, and the
    per-chunk crc32c cost a large share of read throughput on this store's arrays (BENCHMARKS.md).
    """
    tail = [Crc32cCodec()] if crc else []
    if compression == "zstd":
        # bitshuffle groups the bits of 16-bit activations by significance: the only shuffle that helps fp16
        codec: Any = BloscCodec(
            cname="zstd", clevel=3 if level is None else level, shuffle="bitshuffle", typesize=itemsize
        )
    elif compression == "lz4":  # byte shuffle: faster than bitshuffle, and smaller on fp16 activations here
        codec = BloscCodec(
            cname="lz4", clevel=5 if level is None else level, shuffle="shuffle", typesize=itemsize
        )
    elif compression == "none":
        return tail
    else:
        raise ValueError(f"compression {compression!r} is not one of {COMPRESSIONS}")
    return [codec, *tail]


def rows_per_chunk(row_bytes: int, target_bytes: int = 1 << 20, cap: int = 4096) -> int:
    """Rows per inner chunk (the unit of reading): about ``target_bytes`` uncompressed, a power of two."""
    rows = max(1, min(cap, target_bytes // max(1, row_bytes)))
    return 1 << (rows.bit_length() - 1)


def rows_per_shard(row_bytes: int, chunk_rows: int, target_bytes: int, cap: int = 1 << 16) -> int:
    """Rows per shard (the unit of writing): a multiple of ``chunk_rows`` near ``target_bytes``."""
    chunks = max(1, target_bytes // max(1, row_bytes * chunk_rows))
    return int(min(max(chunk_rows, chunks * chunk_rows), max(chunk_rows, (cap // chunk_rows) * chunk_rows)))


configure_zarr()  # every module that touches zarr imports this one first
