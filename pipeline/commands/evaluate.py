"""``twostage eval CHECKPOINT STORE [--split heldout|all|train|val|test]``: score a trained head on a store.

By default only the videos the checkpoint did not train on are scored (the held-out split of its own
store, or every video of another store that is not one of its training videos), and the output says so.
``--split all`` scores every labelled video and warns when training videos are among them; ``--split
test`` (``val``, ``train``) scores the videos of that split of the source list (its ``split`` column).
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twostage eval",
        description="Score a stage-two checkpoint on a feature store (softmax averaged over every stored "
        "view of a video): top-1, top-5, mean class accuracy. By default only videos the checkpoint did not "
        "train on are scored.",
        epilog="The store must come from the same backbone, classes and tensors as the checkpoint's "
        "(the same extract config; other videos, views or splits are fine).",
    )
    parser.add_argument("checkpoint", help="a last.pt / best.pt written by `twostage train`")
    parser.add_argument("store", help="feature store to evaluate on (path or fsspec URL)")
    parser.add_argument(
        "--split",
        choices=("heldout", "all", "train", "val", "test"),
        default="heldout",
        help="heldout (default): only videos the checkpoint did not train on; all: every labelled video "
        "(training videos included: not a test score); train/val/test: that split of the source list",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per batch (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="loader processes (default 2)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda:1...")
    parser.add_argument("--clips", type=int, help="clips per stored view (default: data.eval_clips)")
    parser.add_argument("--allow-incomplete", action="store_true", help="score a store still being written")
    parser.add_argument(
        "--skip-damaged",
        action="store_true",
        help="leave out videos that fail their checksum (default: stop)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from stages.train.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(a.checkpoint, a.store, split=a.split, batch_size=a.batch_size, workers=a.workers,
                            device=a.device, clips=a.clips, allow_incomplete=a.allow_incomplete,
                            integrity="skip" if a.skip_damaged else "check")  # fmt: skip
    if m["training_videos"]:
        print(
            f"WARNING: {m['training_videos']} of the {m['videos']} scored videos were used to train this "
            "checkpoint: this is not a test score (--split heldout or test scores unseen videos only)",
            file=sys.stderr,
        )
    if a.json:
        print(json.dumps(m, indent=2, default=str))
        return 0
    top5 = "n/a (< 5 classes)" if m["top5"] is None else f"{m['top5']:.4f}"
    print(f"{m['head']} checkpoint {m['checkpoint']} (epoch {m['epoch']}) on {m['store']}, "
          f"{m['split_description']}: {m['videos']} videos, {m['clips']} clips")  # fmt: skip
    if "targets" in m:  # data.targets: each target's figures (the first one leads: its top-1 or mAP is top1)
        for name, t in m["targets"].items():
            print(f"  {name}: " + "  ".join(f"{k} {_figure(v)}" for k, v in t.items() if k != "videos"))
        if m.get("joint_top1") is not None:
            print(f"  every single-label target right: {m['joint_top1']:.4f}")
        print(f"  loss {m['val_loss']:.4f}")
        return 0
    print(f"  top-1 {m['top1']:.4f}  top-5 {top5}  mean class accuracy {m['mean_class_acc']:.4f}  "
          f"loss {m['val_loss']:.4f}")  # fmt: skip
    if "top1_mean" in m:  # a memory head, run online: top-1 above is each video's last chunk
        print(f"  online: top-1 at the last chunk {m['top1']:.4f}, of the mean over chunks "
              f"{m['top1_mean']:.4f}, per chunk {m['chunk_top1']:.4f} (--json: every chunk)")  # fmt: skip
    return 0


def _figure(value: object) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
