"""A writer process for the durability and concurrency tests: ``python -m tests.store.writer_proc``.

Adds videos ``first .. first+count-1`` of ``tests.store.synthetic`` to one part, skipping committed
ones, and prints a line per step (``open PID``, ``added <id>``, ``done``; ``error ...`` when the part
is taken) so a test can kill it at a known point. ``--trace FILE`` appends every path this process
writes through zarr's local store (``PATH 0``, or ``PATH 1`` for a create-if-absent write) so a test can
check which files a writer touched; ``--hold S`` keeps the part open S seconds at the end;
``--start-at T`` opens the part at wall-clock time T; ``--create`` creates the store first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _trace_writes(trace_file: str) -> None:
    """Log every file zarr's LocalStore and the store's own shard encoder write (before it is written, so a
    kill still leaves the line)."""
    from zarr.storage import _local

    put = _local._put

    def traced(path, value, exclusive=False):  # type: ignore[no-untyped-def]
        with open(trace_file, "a") as f:
            f.write(f"{os.path.abspath(path)} {int(exclusive)}\n")
        return put(path, value, exclusive=exclusive)

    _local._put = traced

    from store import rows, shards  # shard files this store encodes itself are written here

    write = shards.write_atomically

    def traced_shard(path, data):  # type: ignore[no-untyped-def]
        with open(trace_file, "a") as f:
            f.write(f"{os.path.abspath(path)} 0\n")
        return write(path, data)

    rows.write_atomically = traced_shard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("store")
    ap.add_argument("--part", default="p0000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--max-rows", type=int, default=50)
    ap.add_argument("--shard-mb", type=float, default=None)
    ap.add_argument("--commit-interval", type=float, default=0.0)
    ap.add_argument("--trace", default=None)
    ap.add_argument("--hold", type=float, default=0.0)
    ap.add_argument("--start-at", type=float, default=0.0, help="wall-clock time to open the part at")
    ap.add_argument("--create", action="store_true", help="create the store first (same spec as the tests)")
    args = ap.parse_args(argv)
    if args.trace:
        # the trace hooks zarr-python's LocalStore; the Rust zarrs pipeline writes around it, so a traced
        # writer uses the default pipeline (the layout under test is the same with either)
        import zarr

        os.environ["ZARR_CODEC_PIPELINE__PATH"] = "zarr.core.codec_pipeline.BatchedCodecPipeline"
        zarr.config.set({"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"})
        _trace_writes(args.trace)

    from stages.core.errors import StoreError
    from store import PartWriter, create_store
    from tests.store.synthetic import frozen_weights, make_spec, make_video, video_id

    time.sleep(max(0.0, args.start_at - time.time()))
    if args.create:
        create_store(args.store, make_spec(), frozen=frozen_weights())
    try:
        writer = PartWriter(
            args.store, args.part, shard_mb=args.shard_mb, commit_interval_s=args.commit_interval
        )
    except StoreError as e:
        print(f"error {e}", flush=True)
        return 3
    print(f"open {os.getpid()}", flush=True)
    with writer:
        done = writer.committed_ids()
        for i in range(args.first, args.first + args.count):
            if video_id(i) in done:
                continue
            writer.add(*make_video(args.seed, i, max_rows=args.max_rows))
            print(f"added {video_id(i)}", flush=True)
        time.sleep(args.hold)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
