"""The project's error hierarchy, in one module.

Every error a user can cause subclasses both :class:`TwostageError` and the builtin it refines, so
``except ValueError`` keeps working for callers who do not know this module. Messages name the value,
what was expected, and what to do about it.

This module imports nothing from the project: every package may import it.
"""

from __future__ import annotations


class TwostageError(Exception):
    """Base of every error twostage raises on purpose."""


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
