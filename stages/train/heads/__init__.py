"""Stage-two heads: one registry, one decorated builder per head.

Every builder takes the same keyword-only contract plus its own options (keyword-only, with defaults)::

    build(*, tensors, backbone, num_classes, num_frames, frozen=None, **head_options) -> Head

``tensors`` maps every stored tensor name to its per-frame shape, ``backbone`` is the store's backbone
spec, ``frozen`` the store's frozen backbone weights (or None). The builder refuses, with a
:class:`stages.core.errors.StoreMismatchError`, a store that lacks what the head needs. A head's ``inputs``
lists the store tensors it reads; ``head(feats)`` maps ``{name: [B, T, *shape]}`` to logits ``[B, C]``.

Adding a head: write a module with an ``@HEADS.register("name")`` builder and import it below; the
contract tests in ``tests/stages/train/test_heads.py`` pick it up.

Example:
    >>> head = build_head("linear", tensors={"final.cls": (16,)}, backbone={}, num_classes=5, num_frames=8)
    >>> head.inputs
    ['final.cls']
"""

from __future__ import annotations

import inspect
from typing import Any

from stages.core.errors import ConfigError
from stages.core.registry import Registry

HEADS = Registry("head", list_flag="--list-heads")
CONTRACT = ("tensors", "backbone", "num_classes", "num_frames", "frozen")  # keywords every builder takes

from stages.train.heads import evl, linear, memvit, vivit_fe  # noqa: E402,F401  (register the builders)
from stages.train.heads.blocks import Head  # noqa: E402


def build_head(name: str, **kwargs: Any) -> Head:
    """Build the head registered as ``name`` (see the module docstring for the keyword contract)."""
    return HEADS.get(name)(**kwargs)


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``head.options`` checked against the builder's own keywords (all unknown ones reported at once)."""
    params = inspect.signature(HEADS.get(name)).parameters
    valid = [p for p in params if p not in CONTRACT]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ConfigError(
            [
                f"head.options.{k}: head {name!r} has no option {k!r}; its options: {', '.join(valid)}"
                for k in unknown
            ]
        )
    return dict(options)


def head_from_description(head: dict[str, Any], features: dict[str, Any]) -> Head:
    """The one way a head is built from what describes it: train, eval and prediction all call this.

    Args:
        head: ``{"name", "options", "num_frames", "num_classes"}`` (what checkpoints record as ``head``).
        features: ``{"tensors": {name: per-frame shape}, "backbone": spec, "frozen": weights or None}``,
            from a store (:func:`features_of`) or from a live backbone (prediction on raw videos).
    """
    return build_head(
        head["name"],
        tensors={n: tuple(shape) for n, shape in features["tensors"].items()},
        backbone=features["backbone"],
        num_classes=int(head["num_classes"]),
        num_frames=int(head["num_frames"]),
        frozen=features.get("frozen"),
        **check_options(head["name"], head.get("options", {})),
    )


def features_of(store: Any) -> dict[str, Any]:
    """The feature description of an open ``store.FeatureStore``."""
    return {
        "tensors": {n: t.shape for n, t in store.tensors.items()},
        "backbone": store.backbone,
        "frozen": store.frozen_weights() if store.spec.frozen else None,
    }


__all__ = ["HEADS", "Head", "build_head", "check_options", "features_of", "head_from_description"]
