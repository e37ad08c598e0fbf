"""Image backbones: one registry, a JSON-able spec, built frozen (stage one) or trainable (end to end).

Add a backbone with one decorated builder returning a ``stages.models.vit.Built``; the contract tests in
``tests/stages/models/test_backbones.py`` pick up every ``test_*`` entry. Names follow timm's ``arch.tag``.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from stages.core.errors import ConfigError, WeightsError
from stages.core.registry import Registry
from stages.models import vit as fam
from stages.models import weights
from stages.models.backbone import Backbone, TensorRequest  # noqa: F401  (re-exported)
from stages.models.vit import Built

_PREFIXES = ("open_clip:", "timm:")
Builder = Callable[..., Built]  # builder(*, pretrained: str | None, fetch: bool) -> Built
BACKBONES: Registry[Builder] = Registry("backbone", list_flag="--list-backbones")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic random init without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------- entries
def _register_open_clip(entry: str, arch: str, tag: str, about: str) -> None:
    def build(*, pretrained: str | None, fetch: bool) -> Built:
        return fam.open_clip_model(arch, pretrained or tag, fetch)

    build.__doc__ = f"open_clip {arch}, pretrained={tag!r}: {about}"
    build.family, build.arch = "open_clip", arch  # type: ignore[attr-defined]  (for --list-backbones)
    build.tag = tag  # type: ignore[attr-defined]
    BACKBONES.register(entry)(build)


_register_open_clip(
    "openclip_vit_b16.openai", "ViT-B-16", "openai", "CLIP ViT-B/16, 224 px, width 768, 12 blocks"
)
_register_open_clip(
    "openclip_vit_l14.openai", "ViT-L-14", "openai", "CLIP ViT-L/14, 224 px, width 1024, 24 blocks"
)
_register_open_clip(
    "openclip_vit_b16.laion2b", "ViT-B-16", "laion2b_s34b_b88k", "CLIP ViT-B/16 trained on LAION-2B, 224 px"
)


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


def _register_timm(entry: str, name: str, about: str) -> None:
    def build(*, pretrained: str | None, fetch: bool) -> Built:
        return fam.timm_model(name if pretrained is None else name.partition(".")[0], pretrained, fetch)

    build.__doc__ = f"timm {name}: {about}"
    build.family, build.arch = "timm", name.partition(".")[0]  # type: ignore[attr-defined]
    build.tag = name.partition(".")[2]  # type: ignore[attr-defined]
    BACKBONES.register(entry)(build)


_register_timm(
    "timm_vit_small_patch16_224.augreg_in21k_ft_in1k", "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "ViT-S/16 (ImageNet-21k, fine-tuned on 1k), 224 px, width 384",
)  # fmt: skip
_register_timm(
    "timm_vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "ViT-B/16 (ImageNet-21k, fine-tuned on 1k), 224 px, width 768",
)  # fmt: skip


@BACKBONES.register("synth_vit_tiny.pretrained")
def _synth_vit_tiny(*, pretrained: str | None, fetch: bool) -> Built:
    """Tiny ViT pretrained on synthetic still frames (stages/models/synth_vit.py): 64 px, patch 8,
    width 64, 4 blocks; ships with the package (0.7 MB), no download."""
    from stages.models import synth_vit

    if pretrained not in (None, "pretrained"):
        raise ConfigError(f"synth_vit_tiny has one tag, 'pretrained'; got pretrained={pretrained!r}")
    model = synth_vit.make_model()
    if fetch:  # the shipped weights (a weights_file given instead replaces them)
        digest = weights.sha256_file(synth_vit.WEIGHTS)
        if digest != synth_vit.SHA256:
            raise WeightsError(
                f"{synth_vit.WEIGHTS} has sha256 {digest}, expected {synth_vit.SHA256}; reinstall "
                "twostage, or rebuild it: python -m stages.bench.pretrain --out <that path>"
            )
        weights.load_timm(model, weights.read_state_dict(synth_vit.WEIGHTS))
    built = fam.timm_built(model, "pretrained")
    return built


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
            dynamic_img_size=False,  # other sizes go through Backbone's own position-embedding resize
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
    trainable: str | int | None = 0,
    random_init: bool = False,
) -> Backbone:
    """Build a backbone by registry name, or ``"open_clip:<model>"`` / ``"timm:<model>"``.

    Args:
        name: a name of ``BACKBONES`` (``twostage --list-backbones``), or a pass-through ``family:model``.
        pretrained: pretrained tag; None keeps a registered entry's own tag (pass-through: random init).
            With ``weights_file`` the tag only selects preprocessing (and QuickGELU for OpenAI CLIP).
        weights_file: local ``.pt``/``.pth``/``.bin`` (loaded with ``weights_only=True``) or ``.safetensors``
            state dict, loaded strictly; its sha256 goes into the spec.
        device: where the model lives and computes.
        trainable: 0 = frozen (stage one), ``"all"``, or N = only the last N blocks (and what follows
            them) learn (the end-to-end path).
        random_init: allow a model without weights (no tag, no file): refused otherwise, because its
            features are noise. ``test_*`` entries are random by design.
    """
    path = weights.check_weights_file(weights_file) if weights_file is not None else None
    family, _, model_name = name.partition(":") if name.startswith(_PREFIXES) else ("", "", name)
    if family == "open_clip":
        built = fam.open_clip_model(model_name, pretrained, fetch=path is None)
    elif family == "timm":
        built = fam.timm_model(model_name, pretrained, fetch=path is None)
    else:
        built = BACKBONES.get(name)(pretrained=pretrained, fetch=path is None)
    if path is not None:
        load = weights.load_open_clip if built.taps.family == "open_clip" else weights.load_timm
        load(built.taps.model, weights.read_state_dict(path))
    elif built.pretrained is None and not name.startswith("test_") and not random_init:
        raise ConfigError(
            f"backbone {name!r} would have random weights (no pretrained tag, no weights_file): its features "
            "carry nothing. Give backbone.pretrained=TAG (`twostage --list-backbones` shows the tags), "
            "backbone.weights_file=PATH, or backbone.random_init=true if random features are what you want"
        )
    return Backbone(built.taps, _spec(name, built, path), device, trainable)


def _spec(name: str, built: Built, path: Path | None) -> dict:
    t = built.taps
    if built.interpolation not in ("bicubic", "bilinear"):
        raise ConfigError(f"{name} asks for {built.interpolation!r} resizing; expected bicubic or bilinear")
    return dict(
        name=name,
        family=t.family,
        pretrained=built.pretrained,
        weights_file=None if path is None else str(path),
        sha256=None if path is None else weights.sha256_file(path),
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
