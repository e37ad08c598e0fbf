"""``twostage synth OUT --task {appearance,direction,longrange} --videos N --seed S``: synthetic data."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from stages.video.synth import TASKS


def build_parser() -> argparse.ArgumentParser:
    """The ``twostage synth`` argument parser."""
    p = argparse.ArgumentParser(
        prog="twostage synth",
        description="Write labelled synthetic mp4 videos (lossless RGB H.264) with labels.csv and "
        "classes.txt. Tasks: appearance (which digit), direction (which way it moves; reversed video = "
        "opposite label), longrange (a border colour shown only in the first frames decides the label).",
        epilog="Example: twostage synth data/synth --task direction --videos 64 --seed 0",
    )
    p.add_argument("out_dir", help="output folder: OUT_DIR/videos/*.mp4, labels.csv, classes.txt")
    p.add_argument("--task", choices=TASKS, required=True, help="where the answer lives (see above)")
    p.add_argument("--videos", type=int, default=32, help="number of videos, classes balanced (default 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed = same videos (default 0)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default 32; longrange 64)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate (default 8)")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default 4; longrange 2)")
    p.add_argument(
        "--cue-frames", type=int, default=None, help="longrange: frames showing the cue (default frames // 8)"
    )
    p.add_argument("--sprite", type=float, default=0.25, help="sprite side / frame side (default 0.25)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``twostage synth OUT_DIR --task ... --videos N --seed S``."""
    args = build_parser().parse_args(argv)
    from stages.video.synth import class_names, generate  # av and the digits load only now

    t0 = time.perf_counter()
    rows = generate(
        args.out_dir,
        task=args.task,
        videos=args.videos,
        seed=args.seed,
        size=args.size,
        frames=args.frames,
        fps=args.fps,
        classes=args.classes,
        cue_frames=args.cue_frames,
        sprite=args.sprite,
    )
    r = rows[0]
    n_classes = len(class_names(args.task, args.classes))
    print(
        f"wrote {len(rows)} {args.task} videos ({n_classes} classes, {r['frames']} frames of "
        f"{r['size']}x{r['size']} at {args.fps:g} fps) to {args.out_dir} in {time.perf_counter() - t0:.1f} s"
    )
    return 0
