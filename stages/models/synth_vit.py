"""``synth_vit_tiny``: a tiny ViT pretrained on still frames of the synthetic tasks, so that frozen features
carry what a real pretrained backbone carries (what is shown, where, in which colours) and the benchmark
tests the heads, not a random backbone. The architecture and the shipped weights live here; the
deterministic script that built them is ``stages/bench/pretrain.py`` (``python -m stages.bench.pretrain``).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

WEIGHTS = Path(__file__).resolve().parent / "data" / "synth_vit_tiny.safetensors"
SHA256 = "c7bc2ae0926ec09be5fc8c4c37dceadadef891cea4b683d87d90ed39aa88b79c"
SIZE, PATCH, WIDTH, DEPTH, HEADS = 64, 8, 64, 4, 4
MEAN, STD = 0.5, 0.5  # timm's test_vit preprocessing (what the backbone spec records)


def make_model() -> nn.Module:
    """The architecture, random init (weights come from the shipped file or ``stages.bench.pretrain``)."""
    import timm

    return timm.create_model(
        "test_vit", pretrained=False, num_classes=0, img_size=SIZE, patch_size=PATCH,
        embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, dynamic_img_size=False,
    )  # fmt: skip
