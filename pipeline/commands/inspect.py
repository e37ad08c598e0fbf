"""``twostage inspect STORE [--json]``: videos, frames, tensors, bytes per frame, failures, completeness."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="twostage inspect",
        description="Describe a feature store: videos, frames, tensors, bytes per frame, failures, "
        "completeness.",
    )
    parser.add_argument("store", help="store path or fsspec URL")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    from store import inspect

    info = inspect(args.store)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    state = (
        "complete"
        if info["complete"]
        else "INCOMPLETE (extraction running, killed, or --part runs not committed)"
    )
    print(f"{info['path']}: {info['format']['name']} v{info['format']['version']}, {state}")
    print(
        f"  backbone {info['backbone'].get('name')}  videos {info['videos']}  views {info['views']}  "
        f"frames {info['frames']}  classes {len(info['classes'])}  parts {len(info['parts'])}"
    )
    print(
        f"  bytes per frame: {info['bytes_per_frame']['total']:,} logical"
        + (f", {info['disk_bytes'] / max(1, info['frames']):,.0f} on disk" if info["disk_bytes"] else "")
    )
    for t in info["tensors"]:
        print(
            f"    {t['name']:<16} {t['kind']:<7} {str(tuple(t['shape'])):<16} {t['dtype']:<8} "
            f"{t['bytes_per_frame']:>10,} B/frame"
        )
    print(f"  failures: {len(info['failures'])}")
    for f in info["failures"]:
        print(f"    {f['id']}  {f['source']}  [{f['stage']}] {str(f['error']).splitlines()[0][:120]}")
    return 0
