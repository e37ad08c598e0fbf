"""The feature store's on-disk layout: the one place that names its groups, arrays and files.

A store is one Zarr v3 group::

    STORE/
      zarr.json                  root attributes: attrs["twostage"] describes everything (see schema.py)
      frozen/<name>              float32 arrays: frozen backbone weights stage two needs (e.g. LN1, Wq, Wk
                                 of EVL's layers, to recompute q/k exactly from stored residual streams)
      parts/<part>/              one group per writer; nobody else ever writes inside it
        <tensor>                 [rows, *shape]  float16 or int8, sharded along rows ("b11.tokens", ...)
        <tensor>.scale           [rows, *shape[:-1]] float16, only for int8 tensors (per-token scale)
        time_s                   [rows] float64  presentation time of each stored frame, seconds
        frame_index              [rows] int64    source frame index
        padded                   [rows] bool     True where a short video's frame was repeated
        commits.jsonl            the commit log: one line per committed video (its views and rows,
                                 label, fps, checksum); a video exists only once its line is here
        failures.jsonl           one line per video that could not be extracted (id, path, stage, error)
        LOCK                     the live writer's host and pid
      index/                     written by finalize(): a columnar copy of all commit logs for plain
                                 zarr / dask / xarray users (video_id, label, part, view, row_start, n_rows)

Rows are stored frames: all frames of one video's view are contiguous, in time order, so any clip
(any stride) or run of consecutive chunks is one slice read. The commit logs, not the arrays' shapes,
say which rows are valid: rows past the last committed video are garbage from a killed run and are
overwritten when the part resumes.
"""

from __future__ import annotations

from store import contract

FORMAT_NAME = "twostage-features"
FORMAT_VERSION = 1  # bump on any incompatible layout change; readers refuse newer versions
ATTRS_KEY = "twostage"

PARTS_GROUP = "parts"
FROZEN_GROUP = "frozen"
INDEX_GROUP = "index"

COMMITS_FILE = "commits.jsonl"
FAILURES_FILE = "failures.jsonl"
LOCK_FILE = "LOCK"

SCALE_SUFFIX = ".scale"
ROW_ARRAYS = {  # per-row metadata arrays every part holds: name -> numpy dtype
    "time_s": "float64",
    "frame_index": "int64",
    "padded": "bool",
}

# Dimension names per tensor kind (after the leading "row"), so xarray can open a part group.
KIND_DIMS = {
    "tokens": ("token", "channel"),
    "cls": ("channel",),
    "pooled": ("cell", "channel"),
    "q": ("token", "head", "head_channel"),
    "k": ("token", "head", "head_channel"),
}
FINAL_DIMS = ("embed",)  # "final.cls" has the model's embedding width, not the residual width

KINDS = contract.KINDS
assert set(KIND_DIMS) == set(KINDS), "every kind of the contract needs its dimension names"


def part_path(part: str) -> str:
    return f"{PARTS_GROUP}/{part}"


def array_path(part: str, name: str) -> str:
    return f"{PARTS_GROUP}/{part}/{name}"


def tensor_dims(name: str, kind: str, ndim: int) -> tuple[str, ...]:
    """Dimension names of a stored tensor array (row first); unique per kind so xarray aligns them."""
    inner = FINAL_DIMS if name.startswith("final.") and kind == "cls" else KIND_DIMS[kind]
    if len(inner) != ndim:
        inner = tuple(f"dim{i}" for i in range(ndim))
    return ("row", *inner)


def scale_dims(name: str, kind: str, ndim: int) -> tuple[str, ...]:
    return tensor_dims(name, kind, ndim + 1)[:-1]


def part_name(index: int, count: int | None = None) -> str:
    """``p0003`` for a plain writer, ``p0003-of-0008`` for part 3 of an 8-way job array."""
    return f"p{index:04d}" if count is None else f"p{index:04d}-of-{count:04d}"
