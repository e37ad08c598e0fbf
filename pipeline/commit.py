"""``twostage commit STORE``: finish a store extracted as ``--part I/N`` runs (plain job arrays, no dask).

    twostage extract CONFIG --part 0/8   ...   twostage extract CONFIG --part 7/8    # any hosts, any order
    twostage commit STORE                                                           # once, after all 8

Each ``--part`` run writes its own part (``parts/p0003-of-0008/``) and none of them marks the store
complete. ``commit`` checks that every part of the split is there and no writer still holds one, and
that every video of the source list is committed or recorded failed; then it writes the index and marks
the store complete (``store.finalize``). It refuses, saying what is missing, otherwise.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from store import FeatureStore, finalize
from store.locks import local_writer_alive, read_lock

SPLIT_PART = re.compile(r"^p(\d{4})-of-(\d{4})$")  # layout.part_name(index, count)


def check_parts(parts: list[str], locks: dict[str, dict[str, Any]]) -> list[str]:
    """Problems that forbid committing: parts missing from an ``-of-N`` split, parts with a writer's LOCK.

    Args:
        parts: the part names present in the store.
        locks: part name -> its LOCK content (host, pid), for the parts that have one.
    """
    problems, splits = [], {}
    for name in parts:
        m = SPLIT_PART.match(name)
        if m:
            splits.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if not splits:
        problems.append(
            f"no '-of-NNNN' parts in the store (parts: {parts or 'none'}): run "
            "`twostage extract CONFIG --part I/N` for every I first"
        )
    for count, present in sorted(splits.items()):
        missing = sorted(set(range(count)) - present)
        if missing:
            shown = ", ".join(f"{i}/{count}" for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
            problems.append(
                f"{len(missing)} of {count} parts are missing: run `twostage extract CONFIG "
                f"--part I/{count}` for I/N = {shown}"
            )
    for name, owner in sorted(locks.items()):
        state = "still running" if local_writer_alive(owner) else "killed, or running on another host"
        problems.append(
            f"part {name} has a writer's LOCK (pid {owner.get('pid')} on {owner.get('host')}: "
            f"{state}): wait for it, or rerun its `--part` command, which resumes it"
        )
    return problems


def missing_videos(fs: FeatureStore, source: str | None, classes: list[str] | None) -> list[str] | None:
    """Ids of the store's source list that are neither committed nor recorded failed (None: unreadable)."""
    from stages.video import sources

    try:
        items, _ = sources.read_source(source or "", classes=classes)
    except Exception:  # noqa: BLE001 - the list may live on another host; the part check still applies
        return None
    seen = {v.id for v in fs.videos} | {f["id"] for f in fs.failures}
    return sorted(item.id for item in items if item.id not in seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twostage commit", description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="the store the --part runs wrote (their store.path)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="commit even when videos of the source list are neither committed nor failed",
    )
    args = parser.parse_args(argv)
    fs = FeatureStore(args.store)
    parts = fs.parts()
    locks = {name: owner for name in parts if (owner := read_lock(args.store, name)) is not None}
    problems = check_parts(parts, locks)
    config = fs.attrs.get("config", {})
    missing = missing_videos(fs, config.get("source"), config.get("classes"))
    if missing and not args.force:
        problems.append(
            f"{len(missing)} videos of {config.get('source')} are neither committed nor failed "
            f"(e.g. {', '.join(missing[:5])}): rerun their `--part` command, or pass --force"
        )
    if problems:
        print(f"twostage commit: refusing to commit {args.store}:")
        for p in problems:
            print(f"  - {p}")
        return 1
    done = finalize(args.store, {"parts": len(parts), "committed_by": "twostage commit"})
    print(
        f"committed {args.store}: {done['videos']} videos, {done['failures']} failed, {len(parts)} parts"
        + (
            ""
            if missing is not None
            else f" (source list {config.get('source')} not readable here: only the parts were checked)"
        )
    )
    return 0
