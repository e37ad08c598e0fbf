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

from typing import Any

from stages.core.registry import Registry

HEADS = Registry("head")

from stages.train.heads import evl, linear, vivit_fe  # noqa: E402,F401  (register the builders)
from stages.train.heads.blocks import Head  # noqa: E402


def build_head(name: str, **kwargs: Any) -> Head:
    """Build the head registered as ``name`` (see the module docstring for the keyword contract)."""
    return HEADS.get(name)(**kwargs)


__all__ = ["HEADS", "Head", "build_head"]
