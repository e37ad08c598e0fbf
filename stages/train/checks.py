"""What stage two refuses before it trains or evaluates, each with what, why and what to do.

- a store still being written (unless ``run.allow_incomplete``), or without labelled videos;
- a validation store or checkpoint from another backbone, other classes, or other tensor shapes;
- a checkpoint of another head (``head.init_from``, ``twostage eval``), or not a stage-two checkpoint;
- an end-to-end checkpoint (``head.init_from``) on a store not extracted with its fine-tuned backbone;
- resuming ``run.out/last.pt`` with a config that trains something else.
(Missing tensors are refused by the head builders; too many frames by :class:`ClipDataset`.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stages.core.config import to_dict
from stages.core.errors import CheckpointError, StoreCorruptError, StoreError, StoreMismatchError
from stages.models.weights import sha256_file
from stages.train.config import RESUMABLE_CHANGES, TrainConfig
from stages.train.outputs import CHECKPOINT_FORMAT
from store import FeatureStore
from store.schema import diff, fingerprint

E2E_HEAD_PREFIX = "head."  # the head's keys in an end-to-end checkpoint (stages/e2e/model.py)
MACHINE_KEYS = ("weights_file",)  # backbone keys that name a place, not the features (a moved file is fine)


def open_store(path: str, *, allow_incomplete: bool, key: str = "data.store") -> FeatureStore:
    """Open a store for stage two; refuse one stage one has not finished, or one with no labelled video."""
    store = FeatureStore(path)
    if not store.complete and not allow_incomplete:
        raise StoreError(
            f"{key}={path} is incomplete ({len(store.videos)} videos committed so far): its extraction is "
            "still running, was killed, or its --part runs were not committed. Finish it (run the same "
            "`twostage extract` again, or `twostage commit STORE`), or set run.allow_incomplete=true to "
            "train on the committed videos only."
        )
    if store.log_problems and store.complete:
        raise StoreCorruptError(
            f"{key}={path} has damaged commit lines ({'; '.join(store.log_problems[:3])}): the videos they "
            f"describe are invisible or wrong. Run `twostage verify {path}` and extract those videos again."
        )
    if not any(v.label >= 0 for v in store.videos):
        raise StoreError(
            f"{key}={path} holds no labelled video ({len(store.videos)} videos, all label -1); "
            "extract from a source list with labels"
        )
    return store


def backbone_identity(backbone: dict[str, Any]) -> dict[str, Any]:
    """The backbone spec minus machine-specific keys: two stores fit one head iff these agree."""
    return {k: v for k, v in backbone.items() if k not in MACHINE_KEYS}


def store_meta(store: FeatureStore, inputs: list[str]) -> dict[str, Any]:
    """What a checkpoint records of the store it was trained on."""
    return {
        "path": store.path,
        "fingerprint": store.spec.fingerprint,
        "backbone": store.backbone,
        "backbone_fingerprint": fingerprint(backbone_identity(store.backbone)),
        "classes": list(store.classes),
        "tensors": {n: list(store.tensors[n].shape) for n in inputs},
        "extract": store.spec.config,  # the resolved extraction config: predict reruns it on raw videos
    }


def check_fits(store: FeatureStore, ref: dict[str, Any], *, what: str, error: type[Exception]) -> None:
    """Refuse ``store`` unless its backbone, classes and tensor shapes match ``ref`` (a store meta)."""
    problems = diff(backbone_identity(ref["backbone"]), backbone_identity(store.backbone), "backbone")
    if list(store.classes) != list(ref["classes"]):
        problems.append(
            f"classes: {len(ref['classes'])} {list(ref['classes'])[:5]}... -> "
            f"{len(store.classes)} {list(store.classes)[:5]}..."
        )
    for name, shape in ref["tensors"].items():
        have = list(store.tensors[name].shape) if name in store.tensors else None
        if have != list(shape):
            problems.append(f"tensor {name}: {shape} -> {have if have is not None else 'not stored'}")
    if problems:
        raise error(
            f"{store.path} does not fit {what} ({len(problems)} differences: "
            + "; ".join(problems[:6])
            + ("; ..." if len(problems) > 6 else "")
            + "). Use a store extracted with the same backbone, "
            "classes and tensors (the same extract config)."
        )


def load_checkpoint(path: str | os.PathLike[str], *, key: str) -> dict[str, Any]:
    """A stage-two checkpoint, loaded safely (``weights_only``)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"{key}={path}: no such file; give the path of a last.pt/best.pt that `twostage train` wrote"
        ) from None
    except Exception as e:  # noqa: BLE001 - unpickling errors of every kind: not a checkpoint we can read
        raise CheckpointError(
            f"{key}={path} is not a readable stage-two checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{key}={path} is not a stage-two checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            "give a last.pt/best.pt that `twostage train` wrote"
        )
    return ckpt


def check_checkpoint(ckpt: dict[str, Any], *, head: str, store: FeatureStore, key: str) -> None:
    """Refuse a checkpoint of another head, or one trained on features ``store`` does not hold."""
    if ckpt["head"]["name"] != head:
        raise CheckpointError(
            f"{key} holds a {ckpt['head']['name']!r} head, but this run uses head {head!r}; give a "
            f"checkpoint of a {head!r} run, or set head.name={ckpt['head']['name']}"
        )
    check_fits(
        store,
        ckpt["store"],
        what=f"the checkpoint {key} (trained on {ckpt['store']['path']})",
        error=CheckpointError,
    )


def init_state(
    ckpt: dict[str, Any], *, head: str, store: FeatureStore, key: str, path: str | os.PathLike[str]
) -> dict[str, torch.Tensor]:
    """The head weights ``head.init_from`` gives, checked: a stage-two checkpoint's model, or the head of
    an end-to-end checkpoint (``stages.e2e``, keys ``head.*``) on a store of its fine-tuned backbone."""
    if "e2e" not in ckpt:
        check_checkpoint(ckpt, head=head, store=store, key=key)
        return ckpt["model"]
    check_e2e_checkpoint(ckpt, head=head, store=store, key=key, path=path)
    return {
        k.removeprefix(E2E_HEAD_PREFIX): v for k, v in ckpt["model"].items() if k.startswith(E2E_HEAD_PREFIX)
    }


def check_e2e_checkpoint(
    ckpt: dict[str, Any], *, head: str, store: FeatureStore, key: str, path: str | os.PathLike[str]
) -> None:
    """Refuse an end-to-end checkpoint of another head, other classes or tensor shapes, or a store not
    extracted with its fine-tuned backbone (Gowda et al.: the spatial model frozen as stage one left it)."""
    e2e, problems = ckpt["e2e"], []
    if ckpt["head"]["name"] != head:
        problems.append(f"it holds a {ckpt['head']['name']!r} head, this run uses {head!r} (set head.name)")
    if list(e2e["classes"]) != list(store.classes):
        problems.append(f"classes {list(e2e['classes'])[:5]} != the store's {list(store.classes)[:5]}")
    arch = diff(_architecture(e2e["backbone"]), _architecture(store.backbone), "backbone")
    problems += arch
    for name, shape in e2e["tensors"].items():
        if name in store.tensors and list(store.tensors[name].shape) != list(shape):
            problems.append(
                f"tensor {name}: {list(shape)} in the checkpoint, {list(store.tensors[name].shape)} stored"
            )
    if not arch and store.backbone.get("sha256") != (digest := sha256_file(Path(path))):
        problems.append(
            f"the store's backbone weights (sha256 {str(store.backbone.get('sha256'))[:12]}) are not this "
            f"checkpoint's fine-tuned ones ({digest[:12]}); extract with backbone.weights_file={path}"
        )
    if problems:
        raise CheckpointError(
            f"{key} (an end-to-end checkpoint) does not fit {store.path}: " + "; ".join(problems)
        )


def _architecture(backbone: dict[str, Any]) -> dict[str, Any]:
    """A backbone spec without what names its weights (an e2e run fine-tunes them)."""
    return {k: v for k, v in backbone.items() if k not in (*MACHINE_KEYS, "sha256", "pretrained")}


def load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], *, key: str
) -> dict[str, list[str]] | None:
    """Load a checkpoint's weights: ``load_from`` when the head has one (vivit_fe: other frame counts)."""
    if hasattr(model, "load_from"):
        return model.load_from(state)  # raises CheckpointError itself
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{key}: weights do not fit this head (same name, other options?): "
            f"{str(e).splitlines()[0][:300]}; use the checkpoint's head.options"
        ) from None
    return None


def check_resume(ckpt: dict[str, Any], cfg: TrainConfig, store: FeatureStore, path: str) -> None:
    """Refuse resuming a run with a config or store that would train something else."""
    old, new = _prune(ckpt["config"]), _prune(to_dict(cfg))
    changes = diff(old, new)
    if ckpt["store"]["fingerprint"] != store.spec.fingerprint:
        changes.append(
            f"store fingerprint {ckpt['store']['fingerprint'][:12]} -> {store.spec.fingerprint[:12]}"
        )
    if changes:
        raise CheckpointError(
            f"{path} was written by a run with another config ({'; '.join(changes[:6])}); resuming would not "
            f"continue it. Use another run.out for the new config (head.init_from={path} starts from these "
            "weights), or run.resume=false to start anew here."
        )


def _prune(config: dict[str, Any]) -> dict[str, Any]:
    out = {section: dict(values) for section, values in config.items()}
    for key in RESUMABLE_CHANGES:
        section, name = key.split(".")
        out.get(section, {}).pop(name, None)
    return out


def num_classes(store: FeatureStore) -> int:
    if len(store.classes) < 2:
        raise StoreMismatchError(
            f"{store.path} has {len(store.classes)} classes {list(store.classes)}; "
            "a classifier needs at least 2"
        )
    return len(store.classes)
