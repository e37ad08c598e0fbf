"""Backbone weights files: found, hashed, read safely (``weights_only`` or safetensors), loaded strictly.

Pretrained tags download through open_clip / timm (:func:`fetching` turns a failed download into advice);
a local file is the way without network access. Its sha256 goes into every store's backbone spec.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from stages.core.errors import WeightsError

E2E_BACKBONE_PREFIX = "backbone.model."  # the ViT's keys in an end-to-end checkpoint (stages/e2e/model.py)


def check_weights_file(path: str | Path) -> Path:
    """The absolute path of an existing weights file, else a :class:`WeightsError` saying what to do."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise WeightsError(
            f"weights file {str(path)!r} does not exist (resolved to {p}); pass the path of a local "
            ".pt/.pth/.bin/.safetensors state dict, or drop weights_file to use the pretrained tag"
        )
    return p


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (weights files can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``: no code runs), unwrapped
    from a ``{"state_dict"|"model": ...}`` checkpoint and stripped of DDP's ``module.`` prefix. From an
    end-to-end checkpoint (``stages.e2e``: keys ``backbone.model.*`` and ``head.*``) only the backbone's
    weights, keyed as the ViT itself names them."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise WeightsError(
            f"cannot read weights file {path} ({type(e).__name__}: {e}); expected a state dict saved with "
            "torch.save or safetensors (TorchScript archives such as OpenAI's .pt are not read: use "
            "pretrained='openai', or re-save model.state_dict())"
        ) from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"weights file {path} holds a {type(obj).__name__}, expected a state dict of tensors"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if any(k.startswith(E2E_BACKBONE_PREFIX) for k in state):  # an e2e checkpoint: its fine-tuned backbone
        return {
            k.removeprefix(E2E_BACKBONE_PREFIX): v
            for k, v in state.items()
            if k.startswith(E2E_BACKBONE_PREFIX)
        }
    return state


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"weights do not fit {what}: {str(e)[:2000]}; check the model name") from e


def load_open_clip(visual: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full-CLIP (``visual.*`` keys; the text tower is ignored) or visual-only state dict."""
    if any(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    _load_strict(visual, state, "the open_clip visual tower")


def load_timm(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a timm state dict; classifier keys are dropped when the model was built without a head."""
    own = model.state_dict()
    classifier = str(getattr(model, "pretrained_cfg", {}).get("classifier", "head"))
    state = {k: v for k, v in state.items() if k in own or not k.startswith(classifier + ".")}
    _load_strict(model, state, f"timm {type(model).__name__}")


@contextlib.contextmanager
def fetching(what: str) -> Iterator[None]:
    """Turn a failed pretrained download into a :class:`WeightsError` that names the way out."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        raise WeightsError(
            f"could not fetch pretrained weights for {what} ({type(e).__name__}: {str(e)[:500]}); without "
            "network access, download the file elsewhere and pass weights_file=PATH"
        ) from e
