"""The shards the store encodes itself read back exactly through zarr (default and zarrs pipelines), for
every codec chain the store creates; other chains are left to zarr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from store import codecs
from store.rows import RowArray
from store.shards import ShardCodec, ShardReader, shard_path

PIPELINES = {
    "default": "zarr.core.codec_pipeline.BatchedCodecPipeline",
    "zarrs": "zarrs.ZarrsCodecPipeline",
}


def row_array(tmp_path: Path, shape: tuple[int, ...], dtype: str, compression: str, crc: bool) -> RowArray:
    """A row array with 3-row chunks and 12-row shards, as the store's writer creates them (small)."""
    path = tmp_path / "a.zarr"
    array = zarr.create_array(
        str(path), shape=(0, *shape), chunks=(3, *shape), shards=(12, *shape), dtype=dtype, fill_value=0,
        compressors=codecs.compressors(compression, np.dtype(dtype).itemsize, crc=crc),
        config={"write_empty_chunks": True},
    )  # fmt: skip
    return RowArray(array, path)


def values(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype == "int8":
        return rng.integers(-127, 128, shape).astype(np.int8)
    return (rng.standard_normal(shape) * 3).astype(dtype)


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
@pytest.mark.parametrize(
    ("dtype", "shape"), [("float16", (5, 8)), ("int8", (5, 8)), ("float64", ()), ("bool", ())]
)
@pytest.mark.parametrize("crc", [False, True])
def test_rows_written_here_read_back_through_zarr(tmp_path: Path, pipeline, compression, dtype, shape, crc):
    arr = row_array(tmp_path, shape, dtype, compression, crc)
    assert arr.encoder is not None and arr.shard_rows == 4 * arr.array.chunks[0]  # several chunks a shard
    rng = np.random.default_rng(0)
    data = values(dtype, (3 * arr.shard_rows + 5, *shape), rng)
    second = len(data) // 2 + 3
    arr.put(second, data[second:])  # the later range first: shards complete out of order
    arr.put(0, data[:second])
    arr.flush()  # the last, partial shard
    assert arr.durable(0, len(data))
    with zarr.config.set({"codec_pipeline.path": PIPELINES[pipeline]}):
        got = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:]
    np.testing.assert_array_equal(got, data)


def test_a_partial_shard_rewritten_with_more_rows_keeps_the_first_ones(tmp_path: Path):
    arr = row_array(tmp_path, (4,), "float16", "lz4", False)
    data = values("float16", (arr.shard_rows, 4), np.random.default_rng(1))
    arr.put(0, data[:3])
    arr.flush()
    assert arr.durable(0, 3) and not arr.durable(0, 4)
    arr.put(3, data[3:5])
    assert not arr.durable(3, 5)
    arr.flush()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:], data[:5])


def test_codec_chains_the_store_did_not_make_are_left_to_zarr(tmp_path: Path):
    a = zarr.create_array(str(tmp_path / "x.zarr"), shape=(0, 4), chunks=(2, 4), shards=(4, 4),
                          dtype="float16", compressors=[zarr.codecs.GzipCodec()])  # fmt: skip
    assert ShardCodec.for_array(a.metadata.to_dict()) is None
    ours = zarr.create_array(str(tmp_path / "y.zarr"), shape=(0, 4), chunks=(2, 4), shards=(4, 4),
                             dtype="float16", compressors=codecs.compressors("zstd", 2))  # fmt: skip
    assert ShardCodec.for_array(ours.metadata.to_dict()) is not None


# ------------------------------------------------------------------------- the direct reader (one read a run)


def reader_for(tmp_path: Path, arr: RowArray) -> ShardReader:
    assert arr.encoder is not None
    return ShardReader(tmp_path / "a.zarr", arr.encoder, arr.row_shape, arr.dtype)


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
@pytest.mark.parametrize(("dtype", "shape"), [("float16", (5, 8)), ("int8", (5, 8)), ("bool", ())])
@pytest.mark.parametrize("crc", [False, True])
def test_the_direct_reader_reads_what_zarr_reads(tmp_path: Path, compression, dtype, shape, crc):
    arr = row_array(tmp_path, shape, dtype, compression, crc)
    rng = np.random.default_rng(2)
    data = values(dtype, (3 * arr.shard_rows + 5, *shape), rng)
    arr.put(0, data)
    arr.flush()
    reader = reader_for(tmp_path, arr)
    stored = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    ranges = [(0, len(data)), (0, 1), (2, 3), (5, 29), (11, 13), (23, 41), (len(data) - 1, len(data))]
    ranges += [tuple(sorted(rng.integers(0, len(data) + 1, 2))) for _ in range(20)]
    for start, stop in ranges:
        got = reader.read(int(start), int(stop))
        assert got.dtype == stored.dtype and got.shape == (stop - start, *shape)
        np.testing.assert_array_equal(got, stored[start:stop], err_msg=f"rows {start}:{stop}")
    # rows past the last written chunk read as the fill value, as zarr reads them
    np.testing.assert_array_equal(
        reader.read(len(data), 4 * arr.shard_rows), np.zeros((arr.shard_rows - 5, *shape))
    )
    reader.close()


def test_the_direct_reader_sees_a_shard_replaced_after_it_read_it(tmp_path: Path):
    arr = row_array(tmp_path, (4,), "float16", "lz4", False)
    data = values("float16", (arr.shard_rows, 4), np.random.default_rng(3))
    arr.put(0, data[:3])
    arr.flush()
    reader = reader_for(tmp_path, arr)
    np.testing.assert_array_equal(reader.read(0, 6), np.concatenate([data[:3], np.zeros((3, 4), np.float16)]))
    arr.put(3, data[3:8])
    arr.flush()  # the partial shard is written again, whole, under the same name
    np.testing.assert_array_equal(reader.read(0, 8), data[:8])


@pytest.mark.parametrize("damage", ["index", "chunk"])
def test_the_direct_reader_refuses_a_damaged_shard(tmp_path: Path, damage):
    arr = row_array(tmp_path, (4,), "float16", "none", True)
    arr.put(0, values("float16", (arr.shard_rows, 4), np.random.default_rng(4)))
    arr.flush()
    shard = shard_path(tmp_path / "a.zarr", 0, 2)
    raw = bytearray(shard.read_bytes())
    raw[-10 if damage == "index" else 5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="index fails its crc32c" if damage == "index" else "chunk fails"):
        reader_for(tmp_path, arr).read(0, 3)
