"""``twostage predict CHECKPOINT INPUT... [--out FILE.csv|.jsonl] [--topk K]``: top-k classes per video.

INPUT is a feature store, video files, a folder or a source list; raw videos go through stage one with the
checkpoint's own extract config (``stages/predict/videos.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from stages.core.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twostage predict",
        description="Top-k class names and probabilities per video (softmax averaged over every view) from "
        "a stage-two checkpoint. Raw videos are run through stage one with the backbone, weights, "
        "preprocessing and sampling the checkpoint's store was extracted with; no store is kept.",
    )
    parser.add_argument("checkpoint", help="a last.pt / best.pt written by `twostage train`")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="a feature store, video files, a folder "
                        "or a csv/jsonl source list")  # fmt: skip
    parser.add_argument("--out", help="write FILE.csv or FILE.jsonl (default: print to stdout)")
    parser.add_argument("--topk", type=int, default=5, help="classes per video (default 5)")
    parser.add_argument("--window", type=float, help="seconds: one prediction per window of each video")
    parser.add_argument("--hop", type=float, help="seconds between window starts (default: --window)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda:1...")
    parser.add_argument("--workers", type=int, default=1, help="decode processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def write_rows(rows: list[dict[str, Any]], out: str) -> None:
    """``.jsonl``: one object per video; ``.csv``: id, source, class_1, prob_1, ... class_k, prob_k (a head
    of several targets: the first target's, then ``<target>_class_1``, ``<target>_prob_1``... for the
    others)."""
    if out.endswith(".jsonl"):
        with open(out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return
    k = max((len(r["top"]) for r in rows), default=0)
    others = list(rows[0].get("targets", {}))[1:] if rows else []
    ks = {name: max(len(r["targets"][name]) for r in rows) for name in others}
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        places = ["start", "end"] if rows and "start" in rows[0] else []
        w.writerow(
            ["id", "source", *places, *[c for i in range(1, k + 1) for c in (f"class_{i}", f"prob_{i}")]]
            + [c for n in others for i in range(1, ks[n] + 1) for c in (f"{n}_class_{i}", f"{n}_prob_{i}")]
        )
        for r in rows:
            w.writerow(
                [r["id"], r["source"], *[r[p] for p in places], *[x for pair in r["top"] for x in pair]]
                + [x for n in others for pair in r["targets"][n] for x in pair]
            )


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.topk < 1:
        raise ConfigError(f"--topk {a.topk}: expected a positive number of classes (e.g. --topk 5)")
    if a.out and not a.out.endswith((".csv", ".jsonl")):
        raise ConfigError(f"--out {a.out}: expected a .csv or .jsonl file name")
    from stages.predict.videos import predict

    result = predict(a.checkpoint, a.inputs, topk=a.topk, device=a.device, progress=not a.no_progress,
                     workers=a.workers, window=a.window, hop=a.hop)  # fmt: skip
    for f in result["failures"]:
        print(f"skipped {f['path']}: {f['error']}", file=sys.stderr)
    if a.out:
        write_rows(result["predictions"], a.out)
        print(f"{len(result['predictions'])} videos -> {a.out} ({len(result['failures'])} skipped)")
    else:
        for r in result["predictions"]:
            where = f" [{r['start']:.1f}s-{r['end']:.1f}s]" if "start" in r else ""
            tops = r.get("targets") or {"": r["top"]}
            text = " | ".join(f"{n + ': ' if n else ''}" + "  ".join(f"{c} {p:.4f}" for c, p in top)
                              for n, top in tops.items())  # fmt: skip
            print(r["id"] + where, text)
    return 0
