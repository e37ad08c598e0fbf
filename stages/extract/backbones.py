"""Frozen image backbones for stage one: one registry, a JSON-able spec, multi-layer tensor capture.

Add a backbone with one decorated builder returning a ``vit_taps.Built``; the contract tests in
``tests/stages/test_backbones.py`` pick up every ``test_*`` entry. Names follow timm's ``arch.tag``.
Any open_clip or timm model also works unregistered as ``"open_clip:<model>"`` / ``"timm:<model>"``.

Example:
    >>> bb = build_backbone("test_timm_vit")
    >>> reqs = [TensorRequest("b-1", "tokens"), TensorRequest("b2", "q"), TensorRequest("final", "cls")]
    >>> out = bb.forward_tensors(torch.zeros(2, 3, 32, 32), reqs)
    >>> {k: tuple(v.shape) for k, v in out.items()}
    {'b2.tokens': (2, 17, 32), 'b2.q': (2, 17, 2, 16), 'final.cls': (2, 32)}

Preprocessing (size, mean, std, interpolation) comes from the model's own config and travels in the
spec, so a store always says how its frames were normalised (open_clip issue #1068).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import ConfigError
from stages.core.registry import Registry
from stages.extract import vit_taps as fam
from stages.extract.vit_taps import Built, ViTTaps, capture

KINDS = ("tokens", "cls", "pooled", "q", "k")
_LAYER_KINDS = {"embed": {"tokens", "cls", "pooled"}, "final": {"cls"}}  # blocks allow every kind
_PREFIXES = ("open_clip:", "timm:")


@dataclass(frozen=True)
class TensorRequest:
    """One per-frame tensor to extract: ``layer`` in "embed" | "b{i}" (i < 0 counts from the end) |
    "final"; ``kind`` in :data:`KINDS`; ``pool`` the p of a p x p grid for kind "pooled"."""

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


Builder = Callable[..., Built]  # builder(*, pretrained: str | None, fetch: bool) -> Built
BACKBONES: Registry[Builder] = Registry("backbone")


def list_backbones() -> list[str]:
    """Registered backbone names (the ``open_clip:``/``timm:`` pass-through prefixes take any model)."""
    return BACKBONES.names()


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic random init without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------- entries
def _register_open_clip(entry: str, arch: str, tag: str) -> None:
    def build(*, pretrained: str | None, fetch: bool) -> Built:
        return fam.open_clip_model(arch, pretrained or tag, fetch)

    BACKBONES.register(entry)(build)


_register_open_clip("openclip_vit_b16.openai", "ViT-B-16", "openai")
_register_open_clip("openclip_vit_l14.openai", "ViT-L-14", "openai")
_register_open_clip("openclip_vit_b16.laion2b", "ViT-B-16", "laion2b_s34b_b88k")


@BACKBONES.register("test_openclip_vit")
def _test_openclip_vit(*, pretrained: str | None, fetch: bool) -> Built:
    """Tiny random-init open_clip ViT: 32 px, patch 8 (4 x 4 grid), width 32, 3 blocks, 2 heads, embed 16."""
    from dataclasses import asdict

    import open_clip
    from open_clip.transform import PreprocessCfg

    _random_only("test_openclip_vit", pretrained)
    vision = dict(image_size=32, patch_size=8, width=32, layers=3, head_width=16)  # 2 heads of 16
    text = dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1)  # smallest valid text tower
    with _seeded(0):
        model = open_clip.model.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
    open_clip.set_model_preprocess_cfg(model, asdict(PreprocessCfg(size=32)))  # as create_model does
    return fam.open_clip_built(model.visual, None)


def _register_timm(entry: str, name: str) -> None:
    def build(*, pretrained: str | None, fetch: bool) -> Built:
        return fam.timm_model(name if pretrained is None else name.partition(".")[0], pretrained, fetch)

    BACKBONES.register(entry)(build)


_register_timm(
    "timm_vit_small_patch16_224.augreg_in21k_ft_in1k", "vit_small_patch16_224.augreg_in21k_ft_in1k"
)
_register_timm(
    "timm_vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_base_patch16_224.augreg2_in21k_ft_in1k"
)


@BACKBONES.register("test_timm_vit")
def _test_timm_vit(*, pretrained: str | None, fetch: bool) -> Built:
    """Tiny random-init timm ViT (``test_vit`` resized): 32 px, patch 8, width 32, 3 blocks, 2 heads."""
    import timm

    _random_only("test_timm_vit", pretrained)
    with _seeded(0):
        model = timm.create_model(
            "test_vit",
            pretrained=False,
            num_classes=0,
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=3,
            num_heads=2,
            dynamic_img_size=False,  # fixed size: a wrong frame size is an error, not resampled
        )
    return fam.timm_built(model, None)


def _random_only(name: str, pretrained: str | None) -> None:
    if pretrained is not None:
        raise ConfigError(
            f"{name} is a random-init test backbone; got pretrained={pretrained!r}, expected None"
        )


# ------------------------------------------------------------------------------------------------ builder
def build_backbone(
    name: str,
    *,
    pretrained: str | None = None,
    weights_file: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> FrozenBackbone:
    """Build a frozen backbone by registry name, or ``"open_clip:<model>"`` / ``"timm:<model>"``.

    Args:
        name: a name from :func:`list_backbones`, or a pass-through ``family:model`` name.
        pretrained: pretrained tag; None keeps a registered entry's own tag (pass-through: random init).
            With ``weights_file`` the tag only selects preprocessing (and QuickGELU for OpenAI CLIP).
        weights_file: local ``.pt``/``.pth``/``.bin`` (loaded with ``weights_only=True``) or ``.safetensors``
            state dict, loaded strictly; its sha256 goes into the spec.
        device: where the model lives and computes.
    """
    path = fam.check_weights_file(weights_file) if weights_file is not None else None
    family, _, model_name = name.partition(":") if name.startswith(_PREFIXES) else ("", "", name)
    if family == "open_clip":
        built = fam.open_clip_model(model_name, pretrained, fetch=path is None)
    elif family == "timm":
        built = fam.timm_model(model_name, pretrained, fetch=path is None)
    else:
        built = BACKBONES.get(name)(pretrained=pretrained, fetch=path is None)
    if path is not None:
        load = fam.load_open_clip_weights if built.taps.family == "open_clip" else fam.load_timm_weights
        load(built.taps.model, fam.read_state_dict(path))
    elif built.pretrained is None and not name.startswith("test_"):
        warnings.warn(
            f"backbone {name!r} has random weights (no pretrained tag, no weights_file)", stacklevel=2
        )
    return FrozenBackbone(built.taps, _spec(name, built, path), device)


def _spec(name: str, built: Built, path: Path | None) -> dict:
    t = built.taps
    if built.interpolation not in ("bicubic", "bilinear"):
        raise ConfigError(f"{name} asks for {built.interpolation!r} resizing; expected bicubic or bilinear")
    return dict(
        name=name,
        family=t.family,
        pretrained=built.pretrained,
        weights_file=None if path is None else str(path),
        sha256=None if path is None else fam.sha256_file(path),
        input_size=t.input_size,
        mean=[float(v) for v in built.mean],
        std=[float(v) for v in built.std],
        interpolation=built.interpolation,
        patch_size=t.patch_size,
        grid=t.grid,
        width=t.width,
        depth=t.depth,
        heads=t.heads,
        tokens_per_frame=1 + t.grid**2,
        embed_dim=t.embed_dim,
        ln_eps=t.ln_eps,
    )


# ----------------------------------------------------------------------------------------- FrozenBackbone
class FrozenBackbone(nn.Module):
    """A frozen ViT (no grads, always eval) that returns the requested per-frame tensors in one pass.

    ``forward_tensors`` returns tensors in the compute dtype: float32 on CPU, mostly bfloat16 under CUDA
    autocast (residual streams may stay float32). The caller casts/quantises for the store.
    """

    def __init__(self, taps: ViTTaps, spec: dict, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.model = taps.model
        self.taps = taps
        self.spec = spec
        self.model.requires_grad_(False)
        self.to(device)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Always eval: a frozen backbone never switches dropout or patch dropout on."""
        return super().train(False)

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
        m = re.fullmatch(r"b(-?\d+)", r.layer)
        if r.layer not in _LAYER_KINDS and not m:
            problems.append(
                f"unknown layer {r.layer!r}; expected 'embed', 'b0'..'b{self.taps.depth - 1}' or 'final'"
            )
            return None
        if r.kind not in KINDS:
            problems.append(f"{r.layer}: unknown kind {r.kind!r}; expected one of {list(KINDS)}")
            return None
        allowed = _LAYER_KINDS.get(r.layer, set(KINDS))
        if r.kind not in allowed:
            problems.append(
                f"kind {r.kind!r} is not available on layer {r.layer!r}; expected one of {sorted(allowed)}"
            )
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
        layer = r.layer
        if m:
            block = self._block(m.group(1), problems)
            if block is None:
                return None
            layer = f"b{block}"
        return TensorRequest(layer, r.kind, r.pool)

    def output_shapes(self, requests: Sequence[TensorRequest]) -> dict[str, tuple[int, ...]]:
        """Per-frame shape of each requested tensor, by store name."""
        t = self.taps
        shapes = {
            "tokens": (1 + t.grid**2, t.width),
            "cls": (t.width,),
            "q": (1 + t.grid**2, t.heads, t.width // t.heads),
            "k": (1 + t.grid**2, t.heads, t.width // t.heads),
        }
        out = {}
        for r in self.resolve(requests):
            if r.layer == "final":
                out[r.name] = (t.embed_dim,)
            elif r.kind == "pooled":
                out[r.name] = (r.pool * r.pool, t.width)
            else:
                out[r.name] = shapes[r.kind]
        return out

    @torch.inference_mode()
    def forward_tensors(
        self, frames: torch.Tensor, requests: Sequence[TensorRequest]
    ) -> dict[str, torch.Tensor]:
        """Tensors ``name -> [N, *shape]`` (inference-mode, on the model's device) for normalised frames
        [N, 3, S, S]; one forward per call, pooling done on the device."""
        reqs = self.resolve(requests)
        size = self.taps.input_size
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (3, size, size) or not frames.is_floating_point():
            raise ValueError(
                f"frames have shape {tuple(frames.shape)} and dtype {frames.dtype}; expected normalised "
                f"floats [N, 3, {size}, {size}] (resize/crop to the spec's input_size, then mean/std)"
            )
        blocks = [(int(r.layer[1:]), r.kind) for r in reqs if r.layer.startswith("b")]
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with autocast:
            got = capture(
                self.taps,
                frames.to(self.device, self._dtype, non_blocking=True),
                embed=any(r.layer == "embed" for r in reqs),
                outputs=sorted({i for i, kind in blocks if kind not in ("q", "k")}),
                qk=sorted({i for i, kind in blocks if kind in ("q", "k")}),
                final=any(r.layer == "final" for r in reqs),
            )
            return {r.name: self._select(got, r).contiguous() for r in reqs}

    def _select(self, got: dict[str, torch.Tensor], r: TensorRequest) -> torch.Tensor:
        if r.kind in ("q", "k"):
            return got[r.name]
        x = got[r.layer]  # [N, L, d], or [N, e] for final
        if r.layer == "final" or r.kind == "tokens":
            return x
        if r.kind == "cls":
            return x[:, 0]  # [N, d]
        n, _, d = x.shape
        g = self.taps.grid
        grid = x[:, 1:].reshape(n, g, g, d).permute(0, 3, 1, 2)  # [N, d, g, g]
        pooled = F.adaptive_avg_pool2d(grid, r.pool)  # [N, d, p, p]
        return pooled.flatten(2).transpose(1, 2)  # [N, p*p, d]

    def frozen_weights(self, layers: Sequence[int]) -> dict[str, np.ndarray]:
        """float32 LN1 and q/k projection weights of blocks ``layers`` for ``stages.qk.qk_from_residual``:
        ``b{l}.ln_1.weight``/``.bias`` [d], ``b{l}.q.weight``/``b{l}.k.weight`` [d, d] (Linear [out, in]),
        ``b{l}.q.bias``/``b{l}.k.bias`` [d] (zeros when the model has none). LN eps is ``spec["ln_eps"]``."""
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
            out[f"b{b}.ln_1.weight"], out[f"b{b}.ln_1.bias"] = arr(p.ln_weight, 1.0), arr(p.ln_bias, 0.0)
            out[f"b{b}.q.weight"], out[f"b{b}.q.bias"] = arr(p.q_weight, 0.0), arr(p.q_bias, 0.0)
            out[f"b{b}.k.weight"], out[f"b{b}.k.bias"] = arr(p.k_weight, 0.0), arr(p.k_bias, 0.0)
        return out
