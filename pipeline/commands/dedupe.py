"""``twostage dedupe STORE``: keep one copy of every video id that two extractions both committed."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="twostage dedupe",
        description="Keep one copy of each video id committed by more than one part (two extractions wrote "
        "the store at once): the first sound copy by part name stays, the others are retracted (their rows "
        "stay on disk, invisible). Refused while the store is being written.",
    )
    parser.add_argument("store", help="store path")
    args = parser.parse_args(argv)
    from store import dedupe

    kept = dedupe(args.store)
    for vid, part in kept.items():
        print(f"kept {vid} in part {part}")
    print(f"{args.store}: {len(kept)} duplicated ids resolved" if kept else f"{args.store}: no duplicates")
    return 0
