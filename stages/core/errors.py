"""The project's error hierarchy, in one module: the store's errors (defined in ``store/errors.py``, the
lowest layer, where the root :class:`TwostageError` lives) re-exported, and the errors of the stages.

Every error a user can cause subclasses both :class:`TwostageError` and the builtin it refines, so
``except ValueError`` keeps working for callers who do not know this module. Messages name the value,
what was expected, and what to do about it.
"""

from __future__ import annotations

from store.errors import (
    InvalidIdError,
    NotAStoreError,
    StoreCorruptError,
    StoreError,
    StoreMismatchError,
    StoreVersionError,
    TwostageError,
)


class ConfigError(TwostageError, ValueError):
    """A config file or override is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = f"invalid config{f' {source}' if source else ''}"
        if len(self.problems) == 1:
            message = f"{head}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{head}: {len(self.problems)} problems\n{lines}"
        super().__init__(message)


class RegistryError(TwostageError, KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class LabelError(TwostageError, ValueError):
    """A label that is not in the class list."""


class SourceError(TwostageError, ValueError):
    """A video source list that cannot be read (missing file, bad column, duplicate id)."""


class DecodeError(TwostageError, RuntimeError):
    """A video that no decoder could read."""


class WeightsError(TwostageError, FileNotFoundError):
    """Backbone weights that cannot be found or loaded safely."""


class CheckpointError(TwostageError, ValueError):
    """A checkpoint that does not fit the head, config or store it is used with."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DecodeError",
    "InvalidIdError",
    "LabelError",
    "NotAStoreError",
    "RegistryError",
    "SourceError",
    "StoreCorruptError",
    "StoreError",
    "StoreMismatchError",
    "StoreVersionError",
    "TwostageError",
    "WeightsError",
]
