"""Typed configs: YAML file + dotted overrides -> nested dataclasses, every problem reported at once.

A config schema is a plain (possibly nested) dataclass. :func:`load_config` reads YAML, applies command
line overrides such as ``optim.lr=3e-4 head.options.layers=4``, checks every value against the type hints
and raises one :class:`~stages.core.errors.ConfigError` listing all problems (unknown keys with a close
match, wrong types, missing required keys, ``__post_init__`` cross-field checks).

Example:
    >>> @dataclasses.dataclass
    ... class Optim:
    ...     lr: float = 3e-4  # AdamW default for small heads
    >>> load_config(Optim, None, ["lr=1e-3"])
    Optim(lr=0.001)

Supported field types: ``int``, ``float`` (ints and float-like strings accepted), ``str``, ``bool``,
``X | None``, other unions, ``Literal[...]``, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``dict[str, X]``, nested dataclasses and ``Any``. A YAML file may name ``_base_: other.yaml`` (relative
to itself): the base is loaded first and this file is deep-merged over it. Schemas that use
``from __future__ import annotations`` must be defined at module level so their hints resolve.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from stages.core.errors import ConfigError

T = TypeVar("T")
BASE_KEY = "_base_"
_MISSING: Any = dataclasses.MISSING
_INVALID: Any = object()  # a value that failed validation; its problem is already recorded
_UNIONS = (typing.Union, types.UnionType)
_SCALARS = (bool, int, float, str)
_TOP = "<top level>"


def load_config(schema: type[T], path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (YAML; ``None`` = all defaults), apply ``key=value`` overrides, validate, build.

    Raises:
        ConfigError: listing every problem found (file, overrides and values together).
    """
    data = {} if path is None else _read_yaml(Path(path), ())
    return from_dict(schema, data, overrides, source=None if path is None else os.fspath(path))


def from_dict(
    schema: type[T], data: dict[str, Any], overrides: Sequence[str] = (), source: str | None = None
) -> T:
    """Validate a plain dict (e.g. one saved by :func:`to_dict`) against ``schema`` and build it."""
    checker = _Checker(schema)
    data = copy.deepcopy(data)
    for item in overrides:
        checker.apply_override(data, item)
    cfg = checker.build(schema, data, "")
    if checker.problems:
        raise ConfigError(checker.problems, source=source)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain JSON-able dict (tuples become lists, paths strings)."""
    if not _is_instance(cfg):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def fingerprint(d: dict[str, Any] | Any) -> str:
    """SHA-256 hex digest of ``d`` as canonical JSON (sorted keys), independent of key order."""
    if _is_instance(d):
        d = to_dict(d)
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dump_yaml(cfg: Any) -> str:
    """The config as YAML text that :func:`load_config` reads back to an equal object."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def config_keys(schema: type) -> list[str]:
    """Every dotted key with type and default, e.g. ``"optim.lr: float = 0.0003"`` (for ``--help``)."""
    lines = []
    for key, tp, default in _walk(schema, "", None, frozenset()):
        tail = " (required)" if default is _MISSING else f" = {default!r}"
        lines.append(f"{key}: {_type_name(tp)}{tail}")
    return lines


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """One YAML mapping, with its ``_base_`` chain merged underneath."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{BASE_KEY} cycle {cycle}; remove one of these {BASE_KEY} keys", source=str(path))
    try:
        data = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}; check the path", source=str(path)) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", source=str(path)) from e
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of keys to values, got {_describe(data)}", source=str(path))
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(
            f"{BASE_KEY}: expected a path relative to this file, got {_describe(base)}", source=str(path)
        )
    return _deep_merge(_read_yaml(resolved.parent / base, (*chain, resolved)), data)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of plain dicts; ``over`` wins. Dotted keys (``optim.lr``) are expanded first."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        node, parts = out, key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        last = parts[-1]
        node[last] = (
            merge(node[last], value)
            if isinstance(value, dict) and isinstance(node.get(last), dict)
            else copy.deepcopy(value)
        )
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class _Checker:
    """Builds values of a schema, recording problems instead of stopping at the first."""

    def __init__(self, schema: type) -> None:
        if not _is_dataclass_type(schema):
            raise TypeError(f"config schema must be a dataclass type, got {schema!r}")
        self.schema = schema
        self.problems: list[str] = []
        self.all_keys = [key for key, _, _ in _walk(schema, "", None, frozenset())]  # checks types too

    def apply_override(self, data: dict[str, Any], item: str) -> None:
        """Set ``data[a][b][c] = value`` for ``a.b.c=value`` when the key exists in the schema."""
        key, sep, raw = item.partition("=")
        if item.startswith("-") or not sep:
            example = item.lstrip("-") if sep else f"{item.lstrip('-') or 'optim.lr'}=VALUE"
            self.problems.append(f"override {item!r}: write overrides as key=value, e.g. {example}")
            return
        names = key.strip().split(".")
        if not all(names):
            self.problems.append(f"override {item!r}: empty key part; write overrides as key=value")
            return
        if self._known(names, item):
            _set_nested(data, names, _parse_value(raw))

    def _known(self, names: list[str], item: str) -> bool:
        tp: Any = self.schema
        for i, name in enumerate(names):
            cls = _dataclass_of(tp)
            if cls is None:  # inside a dict / Any / scalar field: the value check reports misuse
                return True
            if name not in _init_fields(cls):
                where = f"unknown key in override {item!r}"
                self.problems.append(self._unknown(".".join(names[: i + 1]), where, list(_init_fields(cls))))
                return False
            tp = _hints(cls)[name]
        return True

    def _unknown(self, key: str, what: str, valid: list[str]) -> str:
        prefix, _, name = key.rpartition(".")
        msg = f"{key}: {what}"
        close = difflib.get_close_matches(name, valid, n=1)
        if close:
            msg += f"; did you mean {_join(prefix, close[0])!r}?"
        else:  # maybe the right name at the wrong level, e.g. `lr` for `optim.lr`
            leaves = {k.rpartition(".")[2]: k for k in reversed(self.all_keys)}
            close = difflib.get_close_matches(name, list(leaves), n=1)
            msg += f"; did you mean {leaves[close[0]]!r}?" if close else ";"
        return f"{msg} valid keys: {', '.join(valid)}"

    def build(self, tp: Any, value: Any, key: str) -> Any:
        """``value`` checked and converted to ``tp``, or ``_INVALID`` after recording a problem."""
        origin = typing.get_origin(tp)
        if tp is Any:
            return value
        if _is_dataclass_type(tp):
            return self.build_dataclass(tp, value, key)
        if origin in _UNIONS:
            return self.build_union(tp, value, key)
        if origin is Literal:
            return self.build_literal(tp, value, key)
        if (origin or tp) in (list, tuple):
            return self.build_sequence(tp, value, key)
        if (origin or tp) is dict:
            return self.build_dict(tp, value, key)
        return self.build_scalar(tp, value, key)

    def problem(self, key: str, expected: str, value: Any) -> Any:
        self.problems.append(f"{key or _TOP}: expected {expected}, got {_describe(value)}")
        return _INVALID

    def build_dataclass(self, cls: type, value: Any, key: str) -> Any:
        fields = _init_fields(cls)
        if not isinstance(value, dict):
            return self.problem(key, f"a mapping with keys {', '.join(fields)}", value)
        before = len(self.problems)
        for name in value:
            if name not in fields:
                what = f"unknown key (value {_short(value[name])})"
                self.problems.append(self._unknown(_join(key, str(name)), what, list(fields)))
        hints, kwargs = _hints(cls), {}
        for name, field in fields.items():
            sub = _join(key, name)
            if name in value:
                kwargs[name] = self.build(hints[name], _over_default(field, value[name]), sub)
            elif field.default is not _MISSING or field.default_factory is not _MISSING:
                continue
            elif _is_dataclass_type(hints[name]):
                kwargs[name] = self.build(hints[name], {}, sub)  # a section may be omitted
            else:
                self.problems.append(f"{sub}: missing required key (expected {_type_name(hints[name])})")
        if len(self.problems) > before:
            return _INVALID
        try:
            return cls(**kwargs)
        except ValueError as e:  # __post_init__ cross-field checks
            self.problems.append(f"{key or _TOP}: {e}")
            return _INVALID

    def build_union(self, tp: Any, value: Any, key: str) -> Any:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and options[0] not in _SCALARS:  # scalars: say `expected int | None`
            return self.build(options[0], value, key)
        for option in options:
            saved, self.problems = self.problems, []
            result = self.build(option, value, key)
            failed, self.problems = bool(self.problems), saved
            if not failed:
                return result
        return self.problem(key, _type_name(tp), value)

    def build_literal(self, tp: Any, value: Any, key: str) -> Any:
        allowed = typing.get_args(tp)
        for a in allowed:
            if value == a and type(value) is type(a):
                return a
        msg = f"{key}: expected one of {', '.join(map(repr, allowed))}, got {_describe(value)}"
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1)
            msg += f"; did you mean {close[0]!r}?" if close else ""
        self.problems.append(msg)
        return _INVALID

    def build_sequence(self, tp: Any, value: Any, key: str) -> Any:
        origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return self.problem(key, _type_name(tp), value)
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length: tuple[int, str]
            if len(value) != len(args):
                return self.problem(key, f"{len(args)} items ({_type_name(tp)})", value)
            item_types = list(args)
        else:
            item_types = [args[0] if args else Any] * len(value)
        items = [
            self.build(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(item_types, value, strict=True))
        ]
        if any(item is _INVALID for item in items):
            return _INVALID
        return tuple(items) if origin is tuple else items

    def build_dict(self, tp: Any, value: Any, key: str) -> Any:
        args = typing.get_args(tp)
        if not isinstance(value, dict):
            return self.problem(key, _type_name(tp), value)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                out[k] = self.problem(f"{key} key", "str", k)
            else:
                out[k] = self.build(args[1] if args else Any, v, _join(key, k))
        return _INVALID if any(v is _INVALID for v in out.values()) else out

    def build_scalar(self, tp: type, value: Any, key: str) -> Any:
        if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:  # PyYAML reads `3e-4` as a string; ints are fine floats
                return float(value)
            except ValueError:
                pass
        if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
            return value
        return self.problem(key, _type_name(tp), value)


def _walk(cls: type, prefix: str, instance: Any, seen: frozenset[type]) -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, type, default) of every leaf field; nested dataclass sections are descended."""
    hints = _hints(cls)
    for name, field in _init_fields(cls).items():
        key, tp = _join(prefix, name), hints[name]
        default = getattr(instance, name) if instance is not None else _default_of(field)
        inner = _dataclass_of(tp)
        if inner is not None and inner not in seen:
            sub = default if _is_instance(default) else None
            yield from _walk(inner, key, sub, seen | {inner})
        else:
            _check_type(tp, key)
            yield key, tp, default


def _check_type(tp: Any, key: str) -> None:
    """Raise ``TypeError`` (a schema bug, not a user error) for field types the loader cannot check."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp in _SCALARS or _is_dataclass_type(tp) or origin is Literal:
        return
    if (origin or tp) is dict and args and args[0] is not str:
        raise TypeError(f"config field {key}: dict keys must be str, got {tp!r}")
    if (origin or tp) in (list, tuple, dict) or origin in _UNIONS:
        for arg in args:
            if arg is not Ellipsis and arg is not type(None):
                _check_type(arg, key)
        return
    raise TypeError(
        f"config field {key}: unsupported type {tp!r}; use int, float, str, bool, Literal, "
        "list, tuple, dict[str, X], X | None, Any or a dataclass"
    )


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as e:
        raise TypeError(
            f"cannot resolve the type hints of {cls.__qualname__} ({e}); define config "
            "dataclasses at module level"
        ) from e


def _init_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _over_default(field: dataclasses.Field[Any], value: Any) -> Any:
    """A partial section merged over the field's default instance (keys it omits keep those values)."""
    default = _default_of(field) if isinstance(value, dict) else None
    return _deep_merge(_plain(default), value) if _is_instance(default) else value


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not _MISSING:
        return field.default
    if field.default_factory is not _MISSING:
        return field.default_factory()
    return _MISSING


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass in ``tp`` or ``tp | None``, else None."""
    if _is_dataclass_type(tp):
        return tp
    options = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in _UNIONS and len(options) == 1 and _is_dataclass_type(options[0]):
        return options[0]
    return None


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    if origin is None:
        return getattr(tp, "__name__", repr(tp))
    if origin is Literal:
        return " | ".join(map(repr, args))
    if origin in _UNIONS:
        return " | ".join(map(_type_name, args))
    inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
    return f"{origin.__name__}[{inner}]"


def _parse_value(raw: str) -> Any:
    """An override value read as YAML (``3``, ``true``, ``[8, 9]``, ``null``); unparsable text stays text."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _set_nested(data: dict[str, Any], names: list[str], value: Any) -> None:
    for name in names[:-1]:
        if not isinstance(data.get(name), dict):
            data[name] = {}
        data = data[name]
    data[names[-1]] = value


def _plain(value: Any) -> Any:
    if _is_instance(value):
        return {name: _plain(getattr(value, name)) for name in _init_fields(type(value))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {_short(value)}"
