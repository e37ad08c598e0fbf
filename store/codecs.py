"""Storage codecs: int8 quantisation with a per-token scale, checksums, compressors and chunk sizes.

Quantisation works on numpy arrays and on torch tensors alike (stage one quantises on the device,
before the copy back to the host); dequantisation is what the reader applies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

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


class Checksum:
    """Per-video checksum over the exact stored bytes (values, scales and row metadata), in name order."""

    algo = "blake2b-128"

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)

    def update(self, name: str, array: np.ndarray) -> None:
        self._h.update(name.encode())
        self._h.update(np.ascontiguousarray(array).tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    @classmethod
    def of(cls, arrays: Iterable[tuple[str, np.ndarray]]) -> str:
        c = cls()
        for name, array in sorted(arrays, key=lambda kv: kv[0]):
            c.update(name, array)
        return c.hexdigest()


def compressors(compression: str, itemsize: int, level: int | None = None) -> list[Any]:
    """Compressor chain for one inner chunk; a crc32c after it catches a flipped byte on read."""
    if compression == "zstd":
        # bitshuffle groups the bits of 16-bit activations by significance: the only shuffle that helps fp16
        codec: Any = BloscCodec(cname="zstd", clevel=3 if level is None else level, shuffle="bitshuffle",
                                typesize=itemsize)
    elif compression == "lz4":
        codec = BloscCodec(cname="lz4", clevel=5 if level is None else level, shuffle="bitshuffle",
                           typesize=itemsize)
    elif compression == "zstd-plain":  # pragma: no cover - kept for benchmarks
        codec = ZstdCodec(level=3 if level is None else level)
    elif compression == "none":
        return [Crc32cCodec()]
    else:
        raise ValueError(f"compression {compression!r} is not one of {COMPRESSIONS}")
    return [codec, Crc32cCodec()]


def rows_per_chunk(row_bytes: int, target_bytes: int = 1 << 20, cap: int = 4096) -> int:
    """Rows per inner chunk (the unit of reading): about ``target_bytes`` uncompressed, a power of two."""
    rows = max(1, min(cap, target_bytes // max(1, row_bytes)))
    return 1 << (rows.bit_length() - 1)


def rows_per_shard(row_bytes: int, chunk_rows: int, target_bytes: int, cap: int = 1 << 16) -> int:
    """Rows per shard (the unit of writing): a multiple of ``chunk_rows`` near ``target_bytes``."""
    chunks = max(1, target_bytes // max(1, row_bytes * chunk_rows))
    return int(min(max(chunk_rows, chunks * chunk_rows), max(chunk_rows, (cap // chunk_rows) * chunk_rows)))
