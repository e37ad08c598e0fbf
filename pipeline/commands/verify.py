"""``twostage verify STORE``: recompute every video's checksum, scan for NaN/Inf; exit 1 naming bad videos."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="twostage verify",
        description="Recompute every video's checksum and scan for NaN/Inf; exit 1 naming each bad video.",
    )
    parser.add_argument("store", help="store path or fsspec URL")
    args = parser.parse_args(argv)
    from store import verify

    problems = verify(args.store)
    for p in problems:
        print(f"BAD {p['id']}: {p['problem']}")
    print(f"{args.store}: {'OK' if not problems else f'{len(problems)} bad videos'}")
    return 1 if problems else 0
