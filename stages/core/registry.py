"""One registry pattern for backbones, heads, decoders and samplers.

Example:
    >>> HEADS = Registry("head", list_flag="--list-heads")
    >>> @HEADS.register("linear")
    ... def build_linear(*, dim: int, num_classes: int): ...
    >>> HEADS.get("linear") is build_linear
    True

Names are unique: registering a name twice raises. An unknown name raises a :class:`RegistryError`
that lists close matches and the command that prints every entry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from stages.core.errors import RegistryError

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """A name -> builder mapping with duplicate rejection and helpful misses."""

    def __init__(self, kind: str, list_flag: str | None = None) -> None:
        self.kind = kind
        self.list_flag = list_flag  # the `twostage` flag that lists the entries, if there is one
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``fn`` under ``name``; a second registration of a name raises."""

        def decorate(fn: T) -> T:
            if name in self._entries:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by {self._entries[name].__module__}); "
                    "pick another name"
                )
            self._entries[name] = fn
            return fn

        return decorate

    def get(self, name: str) -> T:
        """The builder registered as ``name``; an unknown name raises with close matches."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            listing = (
                f"Run `twostage {self.list_flag}` to see all {len(self._entries)} registered {self.kind}s."
                if self.list_flag
                else f"Registered {self.kind}s: {', '.join(self.names())}."
            )
            raise RegistryError(f"unknown {self.kind} {name!r}.{hint} {listing}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
