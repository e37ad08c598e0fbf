"""open_clip / timm specifics: where the per-frame tensors live in a ViT, and one-pass capture.

A :class:`ViTTaps` names the pieces of a pre-LN ViT the backbone layer taps: the block list, each block's
LN1 and attention projections, the stem before block 0, the position embedding, and the full forward to
the image embedding. :func:`capture` runs that forward
once with forward hooks and returns the residual streams and q/k it was asked for:

    frames [N, 3, S, S] --patch embed, CLS, pos (+ln_pre)--> embed [N, L, d]   (input of block 0)
        --block 0--> b0 [N, L, d] --...--> b{depth-1} [N, L, d] --model head--> final [N, e]
    inside block l: LN1(b{l-1}) = h [N, L, d] --Wq, Wk--> q, k [N, L, H, Dh]  (unscaled, after bias)

q/k are recomputed from the captured LN1 output with the attention's own weights (open_clip:
``nn.MultiheadAttention.in_proj_weight`` split in three; timm: ``attn.qkv`` split in three, then the
attention's ``q_norm``/``k_norm``), so they are exactly what the attention multiplies, before 1/sqrt(Dh).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import ConfigError
from stages.models.weights import fetching


@dataclass(frozen=True)
class QKParams:
    """Frozen pieces that turn a block's input into its q/k. Linear layout [out, in]."""

    ln_weight: torch.Tensor | None  # None: LayerNorm without affine
    ln_bias: torch.Tensor | None
    q_weight: torch.Tensor
    q_bias: torch.Tensor | None
    k_weight: torch.Tensor
    k_bias: torch.Tensor | None
    q_norm: nn.Module | None = None  # timm qk_norm models: applied per head after the projection
    k_norm: nn.Module | None = None


@dataclass
class ViTTaps:
    """The tappable structure of one ViT (see module docstring). Geometry fields feed the backbone spec."""

    family: str
    model: nn.Module
    blocks: Sequence[nn.Module]
    ln1: Sequence[nn.Module]
    run: Callable[[torch.Tensor], torch.Tensor]  # frames -> final image embedding
    qk_params: Callable[[int], QKParams]
    input_size: int
    patch_size: int
    grid: int
    width: int
    heads: int
    embed_dim: int
    ln_eps: float
    stem: tuple[str, ...]  # attribute names of the modules/parameters before block 0 (embedding, ln_pre)
    pos_embed: str  # attribute name of the absolute position embedding
    pos_prefix: int  # leading rows of the position embedding that belong to the CLS (1, or 0 if none)
    seq_first: bool = False  # open_clip's legacy LND layout: hooks see [L, N, d]
    qk_unsupported: str | None = None  # why q/k cannot be captured, or None
    residual_qk_unsupported: str | None = None  # why q/k are not exactly LN1 + Linear, or None
    depth: int = field(init=False)

    def __post_init__(self) -> None:
        self.depth = len(self.blocks)


class _StopForward(Exception):
    """Raised by a hook once every requested tensor is captured, to skip the remaining blocks."""


def _square(value: int | Sequence[int], what: str) -> int:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or pair[0] != pair[1]:
        raise ConfigError(f"{what} is {value}, expected a square size; non-square ViTs are not supported")
    return int(pair[0])


def _split_qkv(weight: torch.Tensor, bias: torch.Tensor | None, dim: int) -> tuple:
    """q and k rows of a fused [3*dim, d] in-projection (and its bias, if any)."""
    wq, wk = weight[:dim], weight[dim : 2 * dim]
    bq, bk = (None, None) if bias is None else (bias[:dim], bias[dim : 2 * dim])
    return wq, bq, wk, bk


def _layernorm_eps(norms: Sequence[nn.Module]) -> float:
    eps = {float(getattr(n, "eps", 1e-5)) for n in norms}
    if len(eps) != 1:
        raise ConfigError(f"blocks use different LayerNorm eps {sorted(eps)}; expected one value")
    return eps.pop()


def open_clip_taps(visual: nn.Module) -> ViTTaps:
    """Taps of an open_clip ``VisionTransformer`` visual tower (``model.visual``)."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"open_clip visual tower is a {type(visual).__name__}, expected open_clip's VisionTransformer; "
            "for timm-trunk CLIP models use the timm backbone ('timm:<name>') instead"
        )
    blocks = list(visual.transformer.resblocks)
    attns = [b.attn for b in blocks]
    qk_unsupported = None
    if not all(
        isinstance(b, ResidualAttentionBlock) and isinstance(a, nn.MultiheadAttention)
        for b, a in zip(blocks, attns, strict=True)
    ):
        qk_unsupported = "its blocks are not ResidualAttentionBlock with nn.MultiheadAttention"
    width = int(visual.transformer.width)

    def qk_params(i: int) -> QKParams:
        attn, ln = attns[i], blocks[i].ln_1
        if attn.in_proj_weight is not None:
            wq, bq, wk, bk = _split_qkv(attn.in_proj_weight, attn.in_proj_bias, width)
        else:  # separate projections (kdim/vdim != embed_dim)
            wq, wk = attn.q_proj_weight, attn.k_proj_weight
            bq, bk, _ = (None,) * 3 if attn.in_proj_bias is None else attn.in_proj_bias.chunk(3)
        return QKParams(ln.weight, ln.bias, wq, bq, wk, bk)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = visual(x)
        return out[0] if isinstance(out, tuple) else out  # output_tokens=True returns (pooled, tokens)

    embed_dim = visual.output_dim if visual.proj is not None else visual.ln_post.normalized_shape[0]
    return ViTTaps(
        family="open_clip",
        model=visual,
        blocks=blocks,
        ln1=[b.ln_1 for b in blocks],
        run=run,
        qk_params=qk_params,
        input_size=_square(visual.image_size, "image size"),
        patch_size=_square(visual.patch_size, "patch size"),
        grid=_square(visual.grid_size, "patch grid"),
        width=width,
        heads=int(attns[0].num_heads),
        embed_dim=int(embed_dim),
        ln_eps=_layernorm_eps([b.ln_1 for b in blocks]),
        stem=("conv1", "class_embedding", "positional_embedding", "patch_dropout", "ln_pre"),
        pos_embed="positional_embedding",
        pos_prefix=1,
        seq_first=not getattr(visual.transformer, "batch_first", True),
        qk_unsupported=qk_unsupported,
        residual_qk_unsupported=qk_unsupported,
    )


def timm_taps(model: nn.Module) -> ViTTaps:
    """Taps of a timm ``VisionTransformer`` with one CLS token and no register tokens."""
    from timm.models.vision_transformer import Block, VisionTransformer

    name = type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"timm model is a {name}, expected a timm VisionTransformer (a plain ViT)")
    if model.cls_token is None or model.num_prefix_tokens != 1:
        raise ConfigError(
            f"timm {name} has cls_token={model.cls_token is not None} and {model.num_prefix_tokens} prefix "
            "tokens; only ViTs with one CLS token and no register tokens are supported (pick another model)"
        )
    blocks = list(model.blocks)
    width, heads = int(model.embed_dim), int(blocks[0].attn.num_heads)
    qk_unsupported = None
    for blk in blocks:
        attn = blk.attn
        if not (isinstance(blk, Block) and isinstance(getattr(attn, "qkv", None), nn.Linear)):
            qk_unsupported = f"its blocks ({type(blk).__name__}) are not pre-LN Blocks with a fused attn.qkv"
        elif attn.num_heads * attn.head_dim != width:
            qk_unsupported = (
                f"heads x head_dim = {attn.num_heads} x {attn.head_dim} differs from width {width}"
            )
    residual_qk_unsupported = qk_unsupported
    if qk_unsupported is None:
        if any(not isinstance(b.norm1, nn.LayerNorm) for b in blocks):
            residual_qk_unsupported = "its norm1 is not a LayerNorm"
        elif any(not isinstance(b.attn.q_norm, nn.Identity) for b in blocks):
            residual_qk_unsupported = (
                "its attention normalises q/k (qk_norm), which LN1 + Linear cannot express"
            )

    def qk_params(i: int) -> QKParams:
        attn, ln = blocks[i].attn, blocks[i].norm1
        wq, bq, wk, bk = _split_qkv(attn.qkv.weight, attn.qkv.bias, width)
        norms = (None, None) if isinstance(attn.q_norm, nn.Identity) else (attn.q_norm, attn.k_norm)
        return QKParams(getattr(ln, "weight", None), getattr(ln, "bias", None), wq, bq, wk, bk, *norms)

    return ViTTaps(
        family="timm",
        model=model,
        blocks=blocks,
        ln1=[b.norm1 for b in blocks],
        run=lambda x: model.forward_head(model.forward_features(x), pre_logits=True),
        qk_params=qk_params,
        input_size=_square(model.patch_embed.img_size, "image size"),
        patch_size=_square(model.patch_embed.patch_size, "patch size"),
        grid=_square(model.patch_embed.grid_size, "patch grid"),
        width=width,
        heads=heads,
        embed_dim=int(getattr(model, "head_hidden_size", model.num_features)),
        ln_eps=_layernorm_eps([b.norm1 for b in blocks]),
        stem=("patch_embed", "cls_token", "reg_token", "pos_embed", "pos_drop", "patch_drop", "norm_pre"),
        pos_embed="pos_embed",
        pos_prefix=0 if getattr(model, "no_embed_class", False) else 1,
        qk_unsupported=qk_unsupported,
        residual_qk_unsupported=residual_qk_unsupported,
    )


def qk_from_ln1(h: torch.Tensor, p: QKParams, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [N, L, H, Dh] from a block's LN1 output ``h`` [N, L, d], in the compute dtype."""
    n, length, d = h.shape
    q = F.linear(h, p.q_weight, p.q_bias).reshape(n, length, heads, d // heads)  # [N, L, H, Dh]
    k = F.linear(h, p.k_weight, p.k_bias).reshape(n, length, heads, d // heads)  # [N, L, H, Dh]
    if p.q_norm is not None:  # timm norms over the last (head_dim) axis, so the layout does not matter
        q, k = p.q_norm(q), p.k_norm(k)
    return q, k


def capture(
    taps: ViTTaps,
    frames: torch.Tensor,
    *,
    embed: bool,
    outputs: Sequence[int],
    qk: Sequence[int],
    final: bool,
) -> dict[str, torch.Tensor]:
    """One forward pass collecting ``embed`` [N, L, d], ``b{i}`` [N, L, d], ``b{i}.q``/``.k`` and ``final``.

    Without ``final`` the forward stops after the deepest block needed.
    """
    got: dict[str, torch.Tensor] = {}
    last = max([*outputs, *qk], default=-1)
    stop_at = None if final else last  # -1: stop right at the input of block 0
    lnd = (lambda t: t.transpose(0, 1)) if taps.seq_first else (lambda t: t)  # [L, N, d] -> [N, L, d]

    def on_embed(_m, args):
        if embed:
            got["embed"] = lnd(args[0])
        if stop_at == -1:
            raise _StopForward

    def on_block(i):
        def hook(_m, _args, out):
            if i in outputs:
                got[f"b{i}"] = lnd(out)
            if i == stop_at:
                raise _StopForward

        return hook

    def on_ln1(i):
        def hook(_m, _args, out):
            got[f"b{i}.q"], got[f"b{i}.k"] = qk_from_ln1(lnd(out), taps.qk_params(i), taps.heads)

        return hook

    handles = [taps.blocks[0].register_forward_pre_hook(on_embed)]
    hooked = sorted({*outputs, *([stop_at] if stop_at is not None and stop_at >= 0 else [])})
    handles += [taps.blocks[i].register_forward_hook(on_block(i)) for i in hooked]
    handles += [taps.ln1[i].register_forward_hook(on_ln1(i)) for i in qk]
    try:
        got["final"] = taps.run(frames)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


# ------------------------------------------------------------------------------------------ model builders
@dataclass
class Built:
    """What a builder returns: the ViT's taps, the pretrained tag, and the model's own preprocessing."""

    taps: ViTTaps
    pretrained: str | None
    mean: Sequence[float]
    std: Sequence[float]
    interpolation: str


def open_clip_built(visual: nn.Module, tag: str | None) -> Built:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    pp = open_clip.get_model_preprocess_cfg(visual)
    return Built(
        taps=open_clip_taps(visual),
        pretrained=tag,
        mean=pp.get("mean", OPENAI_DATASET_MEAN),  # open_clip's own defaults, if the model carries none
        std=pp.get("std", OPENAI_DATASET_STD),
        interpolation=pp.get("interpolation", "bicubic"),
    )


def open_clip_model(arch: str, tag: str | None, fetch: bool) -> Built:
    """An open_clip model's visual tower; ``fetch=False`` builds it without weights (a file follows),
    keeping the tag's preprocessing and activation (QuickGELU for OpenAI weights)."""
    import open_clip

    if arch not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {arch!r}; see open_clip.list_models() for valid names")
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag and not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(f"open_clip model {arch!r} has no pretrained tag {tag!r}; expected one of {tags}")
    kwargs = dict(force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)), pretrained_hf=False)
    if fetch:
        with fetching(f"open_clip {arch} pretrained={tag!r}"):
            model = open_clip.create_model(arch, pretrained=tag, **kwargs)
    else:
        pp = {k: v for k, v in tag_cfg.items() if k in ("mean", "std", "interpolation", "resize_mode")}
        model = open_clip.create_model(arch, pretrained=None, force_preprocess_cfg=pp, **kwargs)
    return open_clip_built(model.visual, tag)


def timm_built(model: nn.Module, tag: str | None) -> Built:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return Built(timm_taps(model), tag, cfg["mean"], cfg["std"], cfg["interpolation"])


def timm_model(name: str, tag: str | None, fetch: bool) -> Built:
    """A timm ViT with its head removed; ``name`` may carry the tag (``arch.tag``). ``fetch=False``
    builds it without weights (a file follows) but with the tag's preprocessing config."""
    import timm

    arch, _, name_tag = name.partition(".")
    if tag and name_tag and tag != name_tag:
        raise ConfigError(f"timm model {name!r} already names tag {name_tag!r}; got pretrained={tag!r}")
    tag = tag or name_tag or None
    if not timm.is_model(arch):
        raise ConfigError(f"unknown timm model {arch!r}; see timm.list_models() for valid names")
    full = f"{arch}.{tag}" if tag else arch
    with fetching(f"timm {full}") if fetch and tag else contextlib.nullcontext():
        model = timm.create_model(full, pretrained=bool(fetch and tag), num_classes=0)
    return timm_built(model, tag)
