"""``twostage export-head CHECKPOINT OUT_DIR [--store STORE]``: a trained head as safetensors + JSON.

    CHECKPOINT (last.pt, best.pt) --> OUT_DIR/head.safetensors  the head's weights (+ frozen q/k ones: EVL)
                                      OUT_DIR/head.json         head, class names, the feature contract

Rebuild it anywhere with ``stages.train.head_export.load_head(OUT_DIR)`` (no pickle, no store needed).
``twostage export`` is another thing: stored features as one array per video.

Example:
    twostage export-head runs/vivit/best.pt exported/vivit
"""

from __future__ import annotations

import argparse
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twostage export-head",
        description="Write a trained head as head.safetensors (weights) and head.json (how to rebuild it: "
        "head, options, class names, the features it needs). Load it with "
        "stages.train.head_export.load_head(OUT_DIR).",
    )
    parser.add_argument("checkpoint", help="a last.pt / best.pt written by `twostage train`")
    parser.add_argument("out", help="folder to write head.safetensors and head.json into")
    parser.add_argument(
        "--store",
        help="its feature store (default: the one the checkpoint names, when it is reachable): adds the "
        "tensor specs and sampling to the contract, and the frozen weights an EVL head needs",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an export already in OUT_DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from stages.core.errors import ConfigError
    from stages.train import checks
    from stages.train.head_export import CONFIG_FILE, WEIGHTS_FILE, export_head

    out = Path(a.out)
    if (out / CONFIG_FILE).exists() and not a.overwrite:
        raise ConfigError(
            f"{out} already holds an exported head ({CONFIG_FILE}); pass --overwrite to replace it"
        )
    ckpt = checks.load_checkpoint(a.checkpoint, key="CHECKPOINT")
    store = _store(a.store, ckpt["store"].get("path"))
    config = export_head(ckpt, out, store=store, source=a.checkpoint)
    size = (out / WEIGHTS_FILE).stat().st_size
    inputs = ", ".join(f"{n} {shape}" for n, shape in config["features"]["tensors"].items())
    note = "" if store is not None else " (no store at hand: tensor specs and sampling left out)"
    head = config["head"]
    print(f"{out / WEIGHTS_FILE} ({size / 1024:.1f} KiB) and {out / CONFIG_FILE}: head {head['name']}, "
          f"{len(config['classes'])} classes, {head['num_frames']} frames of {inputs}{note}")  # fmt: skip
    return 0


def _store(given: str | None, recorded: str | None):  # noqa: ANN202 - store.FeatureStore | None
    """The store given (errors shown), else the checkpoint's own when it opens, else None."""
    from store import FeatureStore

    if given is not None:
        return FeatureStore(given)
    if recorded is None or not Path(recorded).exists():
        return None
    try:
        return FeatureStore(recorded)
    except Exception:  # noqa: BLE001 - moved or half-written: export from the checkpoint alone
        return None
