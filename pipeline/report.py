"""How an extraction run reports: the summary lines and the exit status (one run, or a dask driver)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def print_summary(s: dict[str, Any], store: str) -> None:
    """The end-of-run lines: what was extracted, each component's rate, every failed video."""
    if s["committed"] == 0 and s["failed"] == 0:
        print(f"nothing to extract: all {s['skipped']} videos of the list are already committed in {store}")
        return
    print(
        f"extracted {s['committed']} videos ({s['frames']} frames) into {store} in {s['wall_s']:.1f} s: "
        f"{_rate(s['frames_per_s'])} frames/s, {s['videos_per_s']} videos/s; "
        f"skipped {s['skipped']} already committed"
    )
    print(
        f"  components (frames per busy second): decode {_rate(s['decode_frames_per_busy_s'])} (per "
        f"worker), model {_rate(s['model_frames_per_s'])}, write {_rate(s['write_frames_per_s'])}"
    )
    if s["failures"]:
        print(f"  {len(s['failures'])} failed videos:")
        for f in s["failures"]:
            print(f"    {f['id']}  {f['path']}  [{f['stage']}] {f['error'].splitlines()[0][:160]}")


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value}"


def failure_exit(s: dict[str, Any], max_fraction: float, metrics: Path) -> int:
    """Exit status of a run: 1 when more than ``max_fraction`` of its videos failed."""
    bad = s["failed"] / max(1, s["videos"])
    if bad > max_fraction:
        print(
            f"error: {s['failed']}/{s['videos']} videos failed ({bad:.0%} > run.max_failure_fraction="
            f"{max_fraction}); see the list above and {metrics}",
            file=sys.stderr,
        )
        return 1
    return 0
