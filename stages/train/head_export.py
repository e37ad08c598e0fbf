"""A trained head as two portable files: its weights (safetensors) and a JSON that says how to rebuild it and
which features it needs (command line: ``twostage export-head CHECKPOINT OUT_DIR``).

    OUT_DIR/
      head.safetensors  "head.<param>": the trained parameters; "frozen.<name>": the frozen backbone weights
                        the head recomputes q/k with (EVL on residual streams; none for the other heads)
      head.json         head (name, options, frames, classes, inputs; with data.targets each target's
                        classes and kind, in output order), class names, the feature contract
                        (backbone spec with its sha256 and preprocessing, each input tensor's per-frame
                        shape and, when the store was at hand, its layer/kind/pooling and the sampling),
                        the weights file's sha256, and where it came from (checkpoint, epoch, metrics)

Example:
    >>> head, config = load_head("exported/vivit")     # doctest: +SKIP
    >>> probs = head(feats).softmax(-1)                # feats: {name: [B, T, *shape]}, config["features"]
    >>> config["classes"][int(probs[0].argmax())]

Nothing is unpickled: the JSON is text and safetensors holds tensors only, so an exported head is safe to
load from anywhere; the head's code is this package (``stages.train.heads``), rebuilt through the same
``head_from_description`` as training and evaluation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.core.errors import CheckpointError, TwostageError
from stages.train import checks
from stages.train.heads import Head, head_from_description
from store import FeatureStore

FORMAT, VERSION = "twostage-head", 1
WEIGHTS_FILE, CONFIG_FILE = "head.safetensors", "head.json"


def export_head(
    ckpt: dict[str, Any], out: str | Path, *, store: FeatureStore | None = None, source: str = "checkpoint",
) -> dict[str, Any]:  # fmt: skip
    """Write ``ckpt``'s head to ``out`` (``head.safetensors`` + ``head.json``); returns the JSON written.

    ``store`` (a store of the same backbone, classes and tensors; checked) supplies the frozen weights an
    EVL head needs and the tensor specs and sampling of the contract; without it the contract holds what
    the checkpoint records (backbone, per-frame shapes).
    """
    from safetensors.torch import save_file

    head, frozen = _rebuild(ckpt, _frozen(store, ckpt, source), source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"head.{k}": v.detach().cpu().contiguous().clone() for k, v in head.state_dict().items()}
    tensors |= {f"frozen.{k}": torch.as_tensor(np.asarray(v)).contiguous() for k, v in (frozen or {}).items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT, "head": ckpt["head"]["name"]})
    config = describe(ckpt, store, sorted(frozen or {}), _sha256(out / WEIGHTS_FILE), source)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
    return config


def describe(
    ckpt: dict[str, Any], store: FeatureStore | None, frozen: list[str], sha256: str, source: str
) -> dict[str, Any]:
    """The JSON of an export: how to rebuild the head and what features to feed it."""
    meta, head = ckpt["store"], ckpt["head"]
    specs = None if store is None else {n: store.tensors[n].to_json() for n in head["inputs"]}
    return {
        "format": FORMAT,
        "version": VERSION,
        "head": {k: head[k] for k in ("name", "options", "num_frames", "num_classes", "inputs")}
        | ({"targets": head["targets"]} if head.get("targets") else {}),  # data.targets: outputs side by side
        "classes": list(meta["classes"]),
        "features": {
            "tensors": {n: list(meta["tensors"][n]) for n in head["inputs"]},  # name -> per-frame shape
            "input": "{name: float32 [batch, num_frames, *shape]}, the frames `stride` stored rows apart",
            "stride": ckpt["config"]["data"]["stride"],
            "backbone": meta["backbone"],
            "backbone_fingerprint": meta["backbone_fingerprint"],
            "tensor_specs": specs,  # layer, kind, pooling, storage dtype (null: the store was not at hand)
            "sampling": None if store is None else store.spec.sampling,
            "preprocessing": None if store is None else store.spec.preprocessing,
            "store_fingerprint": meta["fingerprint"],
        },
        "frozen": frozen,
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256},
        "trained": {
            "checkpoint": source,
            "epoch": ckpt.get("epoch"),
            "step": ckpt.get("step"),
            "best_top1": ckpt.get("best_top1"),
            "metrics": ckpt.get("metrics", {}),
            "store": meta.get("path"),
        },  # fmt: skip
    }


def load_head(folder: str | Path, *, device: str | torch.device = "cpu") -> tuple[Head, dict[str, Any]]:
    """The head an export holds, rebuilt with its weights, in eval mode; and its JSON.

    Raises:
        CheckpointError: no export in ``folder``, a newer format, or weights whose sha256 differs from
            the JSON's.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    config = _read_config(folder)
    weights = folder / config["weights"]["file"]
    digest = _sha256(weights) if weights.exists() else "missing"
    if digest != config["weights"]["sha256"]:
        raise CheckpointError(
            f"{weights} has sha256 {digest[:16]}, but {folder / CONFIG_FILE} says "
            f"{config['weights']['sha256'][:16]}: the two files are not one export; export the head again"
        )
    tensors = load_file(str(weights))
    frozen = {k.removeprefix("frozen."): v.numpy() for k, v in tensors.items() if k.startswith("frozen.")}
    features = {"tensors": config["features"]["tensors"], "backbone": config["features"]["backbone"],
                "frozen": frozen or None}  # fmt: skip
    head = head_from_description(config["head"], features)
    head.load_state_dict({k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")})
    return head.to(device).eval(), config


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} holds no {CONFIG_FILE}: give a folder `twostage export-head` wrote")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT or int(config.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{path} is not a {FORMAT!r} export of version <= {VERSION} (format {config.get('format')!r}, "
            f"version {config.get('version')!r}); export it again with this version of twostage"
        )
    return config


def _frozen(store: FeatureStore | None, ckpt: dict[str, Any], source: str) -> dict[str, Any] | None:
    if store is None:
        return None
    checks.check_fits(store, ckpt["store"], what=f"the checkpoint {source}", error=CheckpointError)
    return store.frozen_weights() if store.spec.frozen else None


def _rebuild(
    ckpt: dict[str, Any], frozen: dict[str, Any] | None, source: str
) -> tuple[Head, dict[str, Any] | None]:
    """The checkpoint's head with its trained weights, and the frozen weights it needs (None: none)."""
    features = {"tensors": ckpt["store"]["tensors"], "backbone": ckpt["store"]["backbone"], "frozen": None}
    try:
        head = head_from_description(ckpt["head"], features)  # most heads need no frozen weights
        frozen = None
    except TwostageError as e:
        if frozen is None:
            raise CheckpointError(
                f"{source}: its {ckpt['head']['name']!r} head needs more than the checkpoint records ({e}); "
                f"pass --store with its feature store (trained on {ckpt['store'].get('path')}), whose frozen "
                "backbone weights go into the export"
            ) from None
        head = head_from_description(ckpt["head"], features | {"frozen": frozen})
    checks.load_weights(head, ckpt["model"], key=source)
    return head, frozen


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


__all__ = ["export_head", "load_head"]
