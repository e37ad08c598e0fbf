"""A ViT backbone with multi-layer outputs, frozen or trainable (all blocks, or only the last N).

    frames [B, T, 3, S, S] (or [N, 3, S, S])
      --one forward, hooks on the blocks (stages/models/vit.py)--> residual streams, q/k, final embedding
      --select / pool per request--> {name: [B, T, *shape]} (or [N, *shape])

Stage one calls it under ``torch.inference_mode()`` on a frozen backbone; the end-to-end path calls it
with gradients on a trainable one. Inputs may be smaller (or larger) than the weights' native size, any
multiple of the patch size: the position embedding is interpolated on the fly (``posemb.py``), which is
how multigrid feeds one model 112, 160 and 224 px batches.

Tensor names, kinds and layers follow ``store/contract.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import ConfigError
from stages.models.posemb import interpolate_pos_embed
from stages.models.vit import ViTTaps, capture
from store.contract import QK_PARTS, TensorName, block_index, frame_shape, frozen_key


@dataclass(frozen=True)
class TensorRequest:
    """One per-frame tensor: ``layer`` in "embed" | "b{i}" (i < 0 counts from the end) | "final"; ``kind``
    a kind of ``store.contract.KINDS``; ``pool`` the p of a p x p grid for kind "pooled"."""

    layer: str
    kind: str
    pool: int | None = None

    @property
    def name(self) -> str:
        """Store tensor name, e.g. "b11.tokens" (the pooled grid size lives in the spec, not the name)."""
        return f"{self.layer}.{self.kind}"

    @classmethod
    def from_name(cls, name: str, pool: int | None = None) -> TensorRequest:
        """``TensorRequest.from_name("b-1.q")`` == ``TensorRequest("b-1", "q")``."""
        layer, _, kind = name.rpartition(".")
        return cls(layer, kind, pool)


def parse_trainable(value: str | int | None, depth: int) -> int:
    """Trainable blocks counted from the end: ``None``/``"none"``/0 -> 0, ``"all"`` -> depth, N -> N."""
    if value in (None, "none", 0):
        return 0
    if value == "all":
        return depth
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= depth:
        return value
    raise ConfigError(f"trainable={value!r}: expected 'none', 'all' or a number of last blocks in 1..{depth}")


class Backbone(nn.Module):
    """A ViT that returns the requested per-frame tensors in one pass; build it with ``build_backbone``.

    Args:
        taps: where the tensors live in the model (``stages.models.vit``).
        spec: the JSON-able description (name, weights, preprocessing, geometry) stores record.
        device: where the model lives and computes.
        trainable: 0 (frozen: no gradients, always eval), ``"all"``, or N: the last N blocks plus what
            follows them (final norm, projection) learn; the stem and earlier blocks stay frozen and in
            eval mode, and autograd records nothing for them.

    ``forward_tensors`` returns tensors in the compute dtype: float32 on CPU, mostly bfloat16 under CUDA
    autocast (residual streams may stay float32). Callers cast or quantise for the store.
    """

    def __init__(
        self, taps: ViTTaps, spec: dict, device: str | torch.device = "cpu", trainable: str | int | None = 0
    ) -> None:
        super().__init__()
        self.model = taps.model
        self.taps = taps
        self.spec = spec
        self.trainable_blocks = parse_trainable(trainable, taps.depth)
        self.model.requires_grad_(False)
        for _, module in self._trainable_parts():
            module.requires_grad_(True)
        self.to(device)
        self.train(False)

    # -- what learns ---------------------------------------------------------------------------------
    def _trainable_parts(self) -> list[tuple[str, nn.Module | nn.Parameter]]:
        """(name, module or parameter) of what learns: the last N blocks and everything after them."""
        if self.trainable_blocks == 0:
            return []
        n = self.trainable_blocks
        frozen_blocks = {id(b) for b in self.taps.blocks[: self.taps.depth - n]}
        parts: list[tuple[str, nn.Module | nn.Parameter]] = [
            (f"block {i}", b) for i, b in enumerate(self.taps.blocks) if id(b) not in frozen_blocks
        ]
        if n == self.taps.depth:
            return [("all", self.model)]
        block_ids = {id(b) for b in self.taps.blocks}
        for name, child in self.model.named_children():
            if name not in self.taps.stem and id(child) not in block_ids and not _holds(child, block_ids):
                parts.append((name, child))
        for name, param in self.model.named_parameters(recurse=False):
            if name not in self.taps.stem:
                parts.append((name, param))
        return parts

    @property
    def frozen(self) -> bool:
        return self.trainable_blocks == 0

    def train(self, mode: bool = True) -> Backbone:
        """Frozen parts always evaluate (no dropout, no patch dropout); trainable ones follow ``mode``."""
        super().train(False)
        if mode:
            for _, part in self._trainable_parts():
                if isinstance(part, nn.Module):
                    part.train(True)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def qk_recomputable(self) -> bool:
        """Whether stored residual streams + :meth:`frozen_weights` give q/k exactly (False for timm
        qk_norm models and non-standard blocks: store kinds "q"/"k" there instead)."""
        return self.taps.residual_qk_unsupported is None

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- requests ------------------------------------------------------------------------------------
    def _block(self, value: str | int, problems: list[str]) -> int | None:
        depth = self.taps.depth
        i = int(value)
        if not -depth <= i < depth:
            problems.append(
                f"block {value} is out of range for {depth} blocks; expected b0..b{depth - 1} "
                f"or b-{depth}..b-1"
            )
            return None
        return i % depth

    def resolve(self, requests: Sequence[TensorRequest]) -> list[TensorRequest]:
        """Validated requests with negative blocks made positive, duplicates dropped; every problem is
        reported at once in a :class:`ConfigError` (a ``ValueError``)."""
        problems: list[str] = []
        out: dict[str, TensorRequest] = {}
        for r in requests:
            new = self._resolve_one(r, problems)
            if new is None:
                continue
            if new.name in out and out[new.name] != new:
                problems.append(
                    f"{new.name} requested twice with different pool ({out[new.name].pool}, {new.pool})"
                )
            out.setdefault(new.name, new)
        if problems:
            raise ConfigError(problems, source=f"tensor requests for backbone {self.spec['name']}")
        return list(out.values())

    def _resolve_one(self, r: TensorRequest, problems: list[str]) -> TensorRequest | None:
        try:
            TensorName.parse(r.name)
        except ValueError as e:
            problems.append(str(e).replace("'b<i>'", f"'b0'..'b{self.taps.depth - 1}'"))
            return None
        if r.kind in ("q", "k") and self.taps.qk_unsupported:
            problems.append(
                f"{r.layer}.{r.kind}: q/k cannot be captured from this model: {self.taps.qk_unsupported}"
            )
        if r.kind == "pooled" and not (isinstance(r.pool, int) and 1 <= r.pool <= self.taps.grid):
            problems.append(
                f"{r.layer}.pooled needs pool in 1..{self.taps.grid} (the patch grid); got {r.pool}"
            )
        if r.kind != "pooled" and r.pool is not None:
            problems.append(f"{r.layer}.{r.kind}: pool={r.pool} only applies to kind 'pooled'; drop it")
        block = block_index(r.layer)
        if block is None:
            return r
        resolved = self._block(block, problems)
        return None if resolved is None else TensorRequest(f"b{resolved}", r.kind, r.pool)

    def grid_at(self, size: int | None = None) -> int:
        """The patch grid for square inputs of ``size`` pixels (default: the native input size)."""
        size = self.taps.input_size if size is None else size
        if size < self.taps.patch_size or size % self.taps.patch_size:
            raise ValueError(
                f"input size {size} is not a positive multiple of the patch size {self.taps.patch_size}"
            )
        return size // self.taps.patch_size

    def output_shapes(
        self, requests: Sequence[TensorRequest], size: int | None = None
    ) -> dict[str, tuple[int, ...]]:
        """Per-frame shape of each requested tensor, by store name, for inputs of ``size`` pixels."""
        t = self.taps
        grid = self.grid_at(size)
        return {
            r.name: frame_shape(
                r.kind,
                layer=r.layer,
                width=t.width,
                heads=t.heads,
                grid=grid,
                embed_dim=t.embed_dim,
                pool=r.pool,
            )  # fmt: skip
            for r in self.resolve(requests)
        }

    # -- forward -------------------------------------------------------------------------------------
    def forward_tensors(
        self,
        frames: torch.Tensor,
        requests: Sequence[TensorRequest],
        *,
        bf16: bool = True,
        fp16: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Tensors ``name -> [N, *shape]`` for normalised frames [N, 3, S, S], or ``[B, T, *shape]`` for
        [B, T, 3, S, S]; one forward per call, pooling done on the device, bf16 autocast on CUDA (unless
        ``bf16=False``; float16 instead with ``fp16=True``, for GPUs without bf16). ``S`` is the native
        input size or any multiple of the patch size."""
        reqs = self.resolve(requests)
        lead = frames.shape[:-3]
        if frames.ndim not in (4, 5) or frames.shape[-3] != 3 or not frames.is_floating_point():
            raise ValueError(
                f"frames have shape {tuple(frames.shape)} and dtype {frames.dtype}; expected normalised "
                f"floats [N, 3, S, S] or [B, T, 3, S, S] (resize/crop to the spec's input_size, then "
                "mean/std)"
            )
        size = frames.shape[-1]
        if frames.shape[-2] != size:
            raise ValueError(f"frames are {frames.shape[-2]}x{size}; expected square frames")
        grid = self.grid_at(size)
        x = frames.reshape(-1, *frames.shape[-3:]).to(self.device, self._dtype, non_blocking=True)
        blocks = [(int(r.layer[1:]), r.kind) for r in reqs if r.layer.startswith("b")]
        half = torch.float16 if fp16 else torch.bfloat16 if bf16 else None
        autocast = (
            torch.autocast("cuda", dtype=half)
            if self.device.type == "cuda" and half is not None
            else contextlib.nullcontext()
        )
        with autocast, self._at_grid(grid):
            got = capture(
                self.taps,
                x,
                embed=any(r.layer == "embed" for r in reqs),
                outputs=sorted({i for i, kind in blocks if kind not in ("q", "k")}),
                qk=sorted({i for i, kind in blocks if kind in ("q", "k")}),
                final=any(r.layer == "final" for r in reqs),
            )
            out = {r.name: self._select(got, r, grid).contiguous() for r in reqs}
        return {name: y.reshape(*lead, *y.shape[1:]) for name, y in out.items()}

    @contextlib.contextmanager
    def _at_grid(self, grid: int):
        """Run the model at another patch grid: the position embedding interpolated (gradients flow to
        the stored one), timm's fixed-size check lifted. Nothing changes at the native grid."""
        if grid == self.taps.grid:
            yield
            return
        model, name = self.model, self.taps.pos_embed
        original = getattr(model, name)
        patch = getattr(model, "patch_embed", None)
        strict = getattr(patch, "strict_img_size", None)
        resized = interpolate_pos_embed(original, grid, prefix=self.taps.pos_prefix)
        try:
            del model._parameters[name]
            setattr(model, name, resized)  # a plain tensor attribute for this call
            if strict is not None:
                patch.strict_img_size = False
            yield
        finally:
            delattr(model, name)
            model._parameters[name] = original
            if strict is not None:
                patch.strict_img_size = strict

    def _select(self, got: dict[str, torch.Tensor], r: TensorRequest, grid: int) -> torch.Tensor:
        if r.kind in ("q", "k"):
            return got[r.name]
        x = got[r.layer]  # [N, L, d], or [N, e] for final
        if r.layer == "final" or r.kind == "tokens":
            return x
        if r.kind == "cls":
            return x[:, 0]  # [N, d]
        n, _, d = x.shape
        patches = x[:, 1:].reshape(n, grid, grid, d).permute(0, 3, 1, 2)  # [N, d, g, g]
        pooled = F.adaptive_avg_pool2d(patches, r.pool)  # [N, d, p, p]
        return pooled.flatten(2).transpose(1, 2)  # [N, p*p, d]

    # -- what stage two needs of the frozen weights -------------------------------------------------
    def frozen_weights(self, layers: Sequence[int]) -> dict[str, np.ndarray]:
        """float32 LN1 and q/k projection weights of blocks ``layers``, keyed as ``store/contract.py``
        says (``b{l}.ln_1.weight`` ...; Linear layout [out, in]; zero biases when the model has none).
        LN eps is ``spec["ln_eps"]``. Stage two recomputes q/k from them with ``stages.models.qk``."""
        reason = self.taps.residual_qk_unsupported
        if reason:
            raise ConfigError(
                f"q/k of {self.spec['name']} cannot be recomputed from residual streams: {reason}; "
                "store kinds 'q' and 'k' instead"
            )
        problems: list[str] = []
        blocks = [self._block(layer, problems) for layer in layers]
        if problems:
            raise ConfigError(problems, source="frozen_weights layers")
        d = self.taps.width

        def arr(t: torch.Tensor | None, fill: float) -> np.ndarray:
            return np.full(d, fill, np.float32) if t is None else t.detach().float().cpu().numpy()

        out = {}
        for b in blocks:
            p = self.taps.qk_params(b)
            values = (p.ln_weight, p.ln_bias, p.q_weight, p.q_bias, p.k_weight, p.k_bias)
            fills = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            for part, value, fill in zip(QK_PARTS, values, fills, strict=True):
                out[frozen_key(b, part)] = arr(value, fill)
        return out


def _holds(module: nn.Module, ids: set[int]) -> bool:
    """Whether ``module`` contains one of the modules whose ids are given (e.g. the block container)."""
    return any(id(m) in ids for m in module.modules())
