"""The root of twostage's error hierarchy, and the feature store's own errors.

They live here because ``store`` is the lowest layer and imports nothing else of the project; every other
error of the project (``stages.core.errors``, which re-exports these) subclasses :class:`TwostageError` too.
Each error a user can cause also subclasses the builtin it refines, so ``except ValueError`` keeps working
for callers who do not know this module. Messages name the value, what was expected, and what to do.
"""

from __future__ import annotations


class TwostageError(Exception):
    """Base of every error twostage raises on purpose."""


class StoreError(TwostageError, ValueError):
    """A feature store cannot be used as asked."""


class NotAStoreError(StoreError, FileNotFoundError):
    """The path holds no twostage store."""


class StoreVersionError(StoreError):
    """The store was written by a newer (or unknown) format version."""


class StoreMismatchError(StoreError):
    """The store's attributes do not fit the request (another config, backbone, missing tensor...)."""


class StoreCorruptError(StoreError):
    """Stored bytes fail a checksum or cannot be decoded."""


class InvalidIdError(TwostageError, ValueError):
    """A video id that is empty, too long, or could escape the store directory."""
