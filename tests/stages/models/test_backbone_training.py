"""The shared backbone trains (all blocks, or only the last N) and runs at other input sizes.

References are independent of ``stages.models``: timm's own ``dynamic_img_size`` resampling, and
open_clip's ``resize_pos_embed`` applied to a copy of the weights at the other size.
"""

from __future__ import annotations

import copy

import open_clip
import pytest
import timm
import torch

from stages.core.errors import ConfigError
from stages.models import (
    BACKBONES,
    TensorRequest,
    build_backbone,
    interpolate_pos_embed,
    interpolate_temporal_pos,
)

TEST_ENTRIES = [n for n in BACKBONES.names() if n.startswith("test_")]
FINAL = [TensorRequest("final", "cls")]


def frames(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def blocks_of(bb) -> list[torch.nn.Module]:
    return list(bb.model.transformer.resblocks if bb.spec["family"] == "open_clip" else bb.model.blocks)


def stem_params(bb) -> list[torch.nn.Parameter]:
    m = bb.model
    if bb.spec["family"] == "open_clip":
        return [m.class_embedding, m.positional_embedding, *m.conv1.parameters(), *m.ln_pre.parameters()]
    return [m.cls_token, m.pos_embed, *m.patch_embed.parameters()]


def head_params(bb) -> list[torch.nn.Parameter]:
    m = bb.model
    if bb.spec["family"] == "open_clip":
        return [m.proj, *m.ln_post.parameters()]
    return list(m.norm.parameters())


@pytest.mark.parametrize("name", TEST_ENTRIES)
def test_last_n_blocks_get_gradients_and_the_frozen_ones_none(name):
    bb = build_backbone(name, trainable=1)
    out = bb.forward_tensors(frames(), FINAL + [TensorRequest("b1", "tokens")])
    (out["final.cls"].square().sum() + out["b1.tokens"].sum()).backward()
    blocks = blocks_of(bb)
    for p in blocks[-1].parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0
    for p in head_params(bb):
        assert p.grad is not None and p.grad.abs().sum() > 0
    for module in blocks[:-1]:
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert all(p.grad is None and not p.requires_grad for p in stem_params(bb))
    assert not out["b1.tokens"].requires_grad  # block 1 is frozen: autograd recorded nothing up to it


@pytest.mark.parametrize("name", TEST_ENTRIES)
def test_all_blocks_trainable_and_frozen_backbone(name):
    bb = build_backbone(name, trainable="all")
    bb.forward_tensors(frames(), FINAL)["final.cls"].sum().backward()
    assert all(p.grad is not None for p in bb.model.parameters() if p.requires_grad)
    assert sum(p.requires_grad for p in bb.model.parameters()) == len(list(bb.model.parameters()))
    frozen = build_backbone(name)
    assert frozen.frozen and not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.forward_tensors(frames(), FINAL)["final.cls"].requires_grad


@pytest.mark.parametrize("name", TEST_ENTRIES)
def test_frozen_parts_stay_in_eval_mode(name):
    bb = build_backbone(name, trainable=1).train()
    blocks = blocks_of(bb)
    assert blocks[-1].training and not any(b.training for b in blocks[:-1])
    assert not build_backbone(name).train().training


@pytest.mark.parametrize("value", [4, -1, "some", True, 1.5])
def test_bad_trainable_values(value):
    with pytest.raises(ConfigError, match=r"trainable=.*expected 'none', 'all' or a number of last blocks"):
        build_backbone("test_timm_vit", trainable=value)


@pytest.mark.parametrize("name", TEST_ENTRIES)
def test_clips_keep_their_batch_and_time_axes(name):
    bb = build_backbone(name)
    x = frames(6).view(2, 3, 3, 32, 32)  # [B, T, 3, S, S]
    reqs = [TensorRequest("b0", "tokens"), TensorRequest("b-1", "pooled", 2), *FINAL]
    out = bb.forward_tensors(x, reqs)
    flat = bb.forward_tensors(x.flatten(0, 1), reqs)
    for key, value in out.items():
        assert value.shape[:2] == (2, 3)
        torch.testing.assert_close(value.flatten(0, 1), flat[key], rtol=0, atol=0)


def test_timm_at_other_sizes_equals_timms_own_resampling():
    bb = build_backbone("test_timm_vit")
    ref = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                            embed_dim=32, depth=3, num_heads=2, dynamic_img_size=True).eval()  # fmt: skip
    ref.load_state_dict(bb.model.state_dict())
    for size in (16, 24, 32, 48):
        x = frames(size=size)
        want = ref(x)
        got = bb.forward_tensors(x, FINAL + [TensorRequest("b2", "tokens")])
        torch.testing.assert_close(got["final.cls"], want, rtol=1e-5, atol=1e-5)
        assert got["b2.tokens"].shape == (2, 1 + (size // 8) ** 2, 32)
        assert bb.output_shapes([TensorRequest("b2", "tokens")], size)["b2.tokens"] == (
            1 + (size // 8) ** 2,
            32,
        )


def test_open_clip_at_other_sizes_equals_a_resized_copy():
    bb = build_backbone("test_openclip_vit")
    x = frames(size=16)
    got = bb.forward_tensors(x, FINAL)["final.cls"]
    ref = copy.deepcopy(bb.model)
    state = {"visual." + k: v for k, v in ref.state_dict().items()}
    ref.grid_size = (2, 2)  # what open_clip's resize_pos_embed reads of the model at the new size
    holder = torch.nn.Module()
    holder.visual = ref
    open_clip.model.resize_pos_embed(state, holder, interpolation="bicubic", antialias=True)
    ref.positional_embedding = torch.nn.Parameter(state["visual.positional_embedding"])
    torch.testing.assert_close(got, ref(x), rtol=1e-5, atol=1e-5)
    # the model's own parameter is back, untouched
    assert bb.model.positional_embedding.shape == (17, 32)


def test_gradients_reach_the_position_embedding_through_the_resize():
    bb = build_backbone("test_timm_vit", trainable="all")
    bb.forward_tensors(frames(size=16), FINAL)["final.cls"].sum().backward()
    assert bb.model.pos_embed.grad is not None and bb.model.pos_embed.grad.abs().sum() > 0
    assert bb.model.patch_embed.strict_img_size  # restored after the call


def test_interpolate_pos_embed_keeps_the_cls_and_is_the_identity_at_the_same_grid():
    pe = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pe, 4) is pe
    small = interpolate_pos_embed(pe, 2)
    assert small.shape == (1, 5, 8) and torch.equal(small[:, 0], pe[:, 0])
    back = interpolate_pos_embed(pe[0], 8)
    assert back.shape == (65, 8)
    with pytest.raises(ValueError, match="not 1 prefix rows plus a square grid"):
        interpolate_pos_embed(torch.randn(1, 15, 8), 2)


def test_interpolate_temporal_pos_keeps_cls_and_ends():
    pe = torch.randn(1, 1 + 8, 6)
    out = interpolate_temporal_pos(pe, 15)  # every other new row is an old row
    assert out.shape == (1, 16, 6)
    assert torch.equal(out[:, :1], pe[:, :1]) and torch.allclose(out[:, 1::2], pe[:, 1:])
    assert torch.allclose(out[:, 2::2], (pe[:, 1:-1] + pe[:, 2:]) / 2)
    assert torch.equal(interpolate_temporal_pos(pe, 8), pe)
