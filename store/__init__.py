"""The feature store: the only package that knows the Zarr layout (see ``store/layout.py``).

Write (stage one)::

    from store import StoreSpec, TensorSpec, create_store, PartWriter, VideoEntry, ViewRows, finalize

Read (stage two, analysis)::

    from store import FeatureStore, verify, inspect

The names load lazily, so ``store.errors`` and ``store.contract`` import without zarr (fast ``--help``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FeatureStore": "store.reader",
    "VideoRecord": "store.reader",
    "StoreSpec": "store.schema",
    "TensorSpec": "store.schema",
    "dedupe": "store.integrity",
    "finalize": "store.integrity",
    "inspect": "store.integrity",
    "verify": "store.integrity",
    "PartWriter": "store.writer",
    "VideoEntry": "store.writer",
    "ViewRows": "store.writer",
    "ViewSpec": "store.writer",
    "create_store": "store.writer",
    "set_complete": "store.writer",
    "validate_id": "store.writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'store' has no attribute {name!r}")
