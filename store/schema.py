"""What a store holds, as typed objects that round-trip through the root attributes (plain JSON).

:class:`StoreSpec` is written once when a store is created and checked every time it is opened:
stage one refuses to append with another config, stage two refuses a store that does not fit its head.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from store import contract, layout
from store.errors import StoreMismatchError, StoreVersionError

STORAGE_DTYPES = ("float16", "int8")
INT8_BOUND = "|x - x_hat| <= scale / 2 per element, scale = max|x| over the token's channels / 127"


@dataclass(frozen=True)
class TensorSpec:
    """One stored per-frame tensor: ``b11.tokens`` -> layer ``b11``, kind ``tokens``, shape ``(197, 768)``."""

    name: str
    layer: str
    kind: str
    shape: tuple[int, ...]
    dtype: str = "float16"  # storage dtype: float16 (exact for fp16/bf16 activations) or int8 + scale
    pool: int | None = None  # p for kind "pooled": a p x p grid

    def __post_init__(self) -> None:
        contract.TensorName.parse(self.name)  # ValueError naming what is wrong
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {STORAGE_DTYPES}")
        if self.name != f"{self.layer}.{self.kind}":
            raise ValueError(f"tensor name {self.name!r} must be '{self.layer}.{self.kind}'")

    @property
    def quantised(self) -> bool:
        return self.dtype == "int8"

    @property
    def bytes_per_frame(self) -> int:
        values = int(np.prod(self.shape))
        if not self.quantised:
            return values * 2
        return values + int(np.prod(self.shape[:-1])) * 2  # int8 values + one float16 scale per token

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "layer": self.layer,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "pool": self.pool,
            "bytes_per_frame": self.bytes_per_frame,
        }
        if self.quantised:
            out["quantisation"] = {
                "scheme": "int8-absmax-per-token",
                "scale_dtype": "float16",
                "bound": INT8_BOUND,
            }
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(
            name=d["name"],
            layer=d["layer"],
            kind=d["kind"],
            shape=tuple(d["shape"]),
            dtype=d.get("dtype", "float16"),
            pool=d.get("pool"),
        )


@dataclass(frozen=True)
class StoreSpec:
    """Everything needed to use the features correctly; its feature-defining part is fingerprinted."""

    backbone: dict[str, Any]
    preprocessing: dict[str, Any]
    sampling: dict[str, Any]
    tensors: tuple[TensorSpec, ...]
    classes: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)  # the resolved extraction config (provenance)
    storage: dict[str, Any] = field(default_factory=dict)  # compressor, shard size (not fingerprinted)
    frozen: tuple[str, ...] = ()  # names of arrays under frozen/

    def __post_init__(self) -> None:
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate tensor names in {names}")
        if not self.tensors:
            raise ValueError("a store needs at least one tensor")

    def tensor(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise StoreMismatchError(
            f"the store holds no tensor {name!r}; it holds {[t.name for t in self.tensors]}. "
            "Extract again with this tensor in extract.tensors, or pick one the store has."
        )

    @property
    def bytes_per_frame(self) -> int:
        return sum(t.bytes_per_frame for t in self.tensors)

    def identity(self) -> dict[str, Any]:
        """The part of the spec that defines the features: two runs may share a store iff these agree."""
        return {
            "backbone": self.backbone,
            "preprocessing": self.preprocessing,
            "sampling": self.sampling,
            "tensors": [t.to_json() for t in self.tensors],
            "classes": list(self.classes),
        }

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity())

    def to_json(self, package_version: str) -> dict[str, Any]:
        return {
            "format": layout.FORMAT_NAME,
            "version": layout.FORMAT_VERSION,
            "package_version": package_version,
            **self.identity(),
            "config": self.config,
            "storage": self.storage,
            "frozen": list(self.frozen),
            "fingerprint": self.fingerprint,
            "bytes_per_frame": self.bytes_per_frame,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoreSpec:
        return cls(
            backbone=d["backbone"],
            preprocessing=d["preprocessing"],
            sampling=d["sampling"],
            tensors=tuple(TensorSpec.from_json(t) for t in d["tensors"]),
            classes=tuple(d.get("classes", ())),
            config=d.get("config", {}),
            storage=d.get("storage", {}),
            frozen=tuple(d.get("frozen", ())),
        )


def fingerprint(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_format(attrs: dict[str, Any], where: str) -> None:
    """Refuse attributes of another format or of a newer version, naming the fix."""
    fmt, version = attrs.get("format"), attrs.get("version")
    if fmt != layout.FORMAT_NAME:
        raise StoreVersionError(f"{where} holds format {fmt!r}, expected {layout.FORMAT_NAME!r}")
    if not isinstance(version, int) or version > layout.FORMAT_VERSION:
        raise StoreVersionError(
            f"{where} was written with store format version {version!r}; this twostage reads versions "
            f"<= {layout.FORMAT_VERSION}. Upgrade twostage (pip install -U twostage) to read it."
        )


def diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable differences between two JSON-like values: ``backbone.name: 'a' -> 'b'``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{sub}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{sub}: {old[key]!r} -> (absent)")
            else:
                out.extend(diff(old[key], new[key], sub))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in diff(a, b, f"{path}[{i}]")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]
