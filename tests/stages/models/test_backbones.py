"""Contract tests for every registered ``test_*`` backbone, plus registration and failure cases.

References are computed independently of ``stages.models``: the libraries' own
``forward_intermediates``, hooks written here, and q/k/v recomputed from the attention modules' weights.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F

from stages.core.errors import ConfigError, RegistryError, WeightsError
from stages.models import BACKBONES, TensorRequest, build_backbone, qk_from_residual

TEST_ENTRIES = [n for n in BACKBONES.names() if n.startswith("test_")]
SPEC_KEYS = {
    "name", "family", "pretrained", "weights_file", "sha256", "input_size", "mean", "std", "interpolation",
    "patch_size", "grid", "width", "depth", "heads", "tokens_per_frame", "embed_dim", "ln_eps",
}  # fmt: skip
ATOL = 1e-5  # float32 on CPU; the references take other but equivalent code paths


@pytest.fixture(scope="module", params=TEST_ENTRIES)
def bb(request):
    return build_backbone(request.param)


@pytest.fixture(scope="module")
def frames(bb):
    s = bb.spec["input_size"]
    return torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(1))  # [N, 3, S, S]


def all_requests(bb) -> list[TensorRequest]:
    g, depth = bb.spec["grid"], bb.spec["depth"]
    reqs = [TensorRequest("embed", k) for k in ("tokens", "cls")] + [TensorRequest("embed", "pooled", 2)]
    for i in range(depth):
        reqs += [TensorRequest(f"b{i}", k) for k in ("tokens", "cls", "q", "k")]
        reqs.append(TensorRequest(f"b{i}", "pooled", 1 + i % g))
    return reqs + [TensorRequest("final", "cls")]


@pytest.fixture(scope="module")
def out(bb, frames):
    return bb.forward_tensors(frames, all_requests(bb))


def parts(bb):
    """(blocks, attention modules) found by the libraries' own attribute names."""
    if bb.spec["family"] == "open_clip":
        blocks = list(bb.model.transformer.resblocks)
    else:
        blocks = list(bb.model.blocks)
    return blocks, [b.attn for b in blocks]


def test_test_entries_exist():
    assert {"test_openclip_vit", "test_timm_vit"} <= set(TEST_ENTRIES)


def test_spec_is_json_and_consistent(bb):
    spec = json.loads(json.dumps(bb.spec))
    assert set(spec) == SPEC_KEYS
    assert spec["tokens_per_frame"] == 1 + spec["grid"] ** 2
    assert spec["input_size"] == spec["grid"] * spec["patch_size"]
    assert len(spec["mean"]) == len(spec["std"]) == 3
    assert spec["pretrained"] is spec["weights_file"] is spec["sha256"] is None
    assert spec["interpolation"] in ("bicubic", "bilinear")


def test_shapes_and_dtype(bb, frames, out):
    shapes = bb.output_shapes(all_requests(bb))
    assert set(shapes) == set(out)
    for name, shape in shapes.items():
        assert tuple(out[name].shape) == (len(frames), *shape), name
        assert out[name].dtype == torch.float32, name
    s = bb.spec
    assert shapes["b0.q"] == (s["tokens_per_frame"], s["heads"], s["width"] // s["heads"])
    assert shapes["final.cls"] == (s["embed_dim"],)


def test_deterministic_builds_and_rng_untouched(bb, frames, out):
    before = torch.random.get_rng_state()
    again = build_backbone(bb.spec["name"]).forward_tensors(frames, all_requests(bb))
    assert torch.equal(torch.random.get_rng_state(), before)
    for name in out:
        assert torch.equal(out[name], again[name]), name


def test_tokens_match_library_intermediates(bb, frames, out):
    depth, m = bb.spec["depth"], bb.model
    if bb.spec["family"] == "open_clip":
        res = m.forward_intermediates(frames, output_fmt="NLC", output_extra_tokens=True)
        patches, prefix = res["image_intermediates"], res["image_intermediates_prefix"]
    else:
        patches, prefix = zip(*m.forward_intermediates(
            frames, norm=False, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
        ), strict=True)  # fmt: skip
    assert len(patches) == depth
    for i in range(depth):
        ref = torch.cat([prefix[i], patches[i]], dim=1)  # [N, L, d]
        torch.testing.assert_close(out[f"b{i}.tokens"], ref, atol=ATOL, rtol=0)


def test_embed_is_input_of_first_block(bb, frames, out):
    seen = []
    blocks, _ = parts(bb)
    handle = blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        bb.taps.run(frames)
    handle.remove()
    torch.testing.assert_close(out["embed.tokens"], seen[0], atol=ATOL, rtol=0)


def test_final_matches_model_forward(bb, frames, out):
    with torch.no_grad():
        if bb.spec["family"] == "open_clip":
            ref = bb.model(frames)
        else:
            ref = bb.model.forward_head(bb.model.forward_features(frames), pre_logits=True)
    torch.testing.assert_close(out["final.cls"], ref, atol=ATOL, rtol=0)


def test_cls_and_pooled_derive_from_tokens(bb, out):
    g = bb.spec["grid"]
    for layer in ["embed"] + [f"b{i}" for i in range(bb.spec["depth"])]:
        tokens = out[f"{layer}.tokens"]
        n, _, d = tokens.shape
        assert torch.equal(out[f"{layer}.cls"], tokens[:, 0])
        grid = tokens[:, 1:].reshape(n, g, g, d)  # [N, g, g, d] row-major patches
        p = out[f"{layer}.pooled"].shape[1] ** 0.5
        p = int(round(p))
        if g % p == 0:  # block means, written without adaptive pooling
            ref = grid.reshape(n, p, g // p, p, g // p, d).mean((2, 4)).reshape(n, p * p, d)
        else:
            ref = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), p).flatten(2).transpose(1, 2)
        torch.testing.assert_close(out[f"{layer}.pooled"], ref, atol=ATOL, rtol=0)


def test_pooled_non_divisor_grid(bb, frames):
    g = bb.spec["grid"]
    res = bb.forward_tensors(frames, [TensorRequest("b0", "tokens"), TensorRequest("b0", "pooled", g - 1)])
    grid = res["b0.tokens"][:, 1:].reshape(len(frames), g, g, -1).permute(0, 3, 1, 2)  # [N, d, g, g]
    ref = F.adaptive_avg_pool2d(grid, g - 1).flatten(2).transpose(1, 2)  # [N, p*p, d]
    torch.testing.assert_close(res["b0.pooled"], ref, atol=ATOL, rtol=0)


def _attention_reference(bb, attn, h):
    """q, k [N, L, H, Dh] and the attention output, from the module's own weights and input ``h``."""
    n, length, d = h.shape
    heads = bb.spec["heads"]
    if bb.spec["family"] == "open_clip":
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # [N, L, d] each
        out_proj = attn.out_proj
    else:
        q, k, v = attn.qkv(h).reshape(n, length, 3, d).unbind(2)  # [N, L, d] each
        out_proj = attn.proj
    q, k, v = (t.reshape(n, length, heads, d // heads) for t in (q, k, v))  # [N, L, H, Dh]
    weights = torch.einsum("nqhc,nkhc->nhqk", q, k) * (d // heads) ** -0.5  # [N, H, L, L]
    mixed = torch.einsum("nhqk,nkhc->nqhc", weights.softmax(-1), v).reshape(n, length, d)  # [N, L, d]
    return q, k, out_proj(mixed)


def test_qk_are_the_attention_modules_own(bb, frames, out):
    _, attns = parts(bb)
    inputs, outputs = {}, {}
    handles = []
    for i, attn in enumerate(attns):
        handles.append(attn.register_forward_pre_hook(lambda _m, a, i=i: inputs.__setitem__(i, a[0])))
        handles.append(attn.register_forward_hook(lambda _m, _a, o, i=i: outputs.__setitem__(i, o)))
    with torch.no_grad():
        bb.taps.run(frames)
    for handle in handles:
        handle.remove()
    for i, attn in enumerate(attns):
        with torch.no_grad():
            q, k, attn_out = _attention_reference(bb, attn, inputs[i])
        module_out = outputs[i][0] if isinstance(outputs[i], tuple) else outputs[i]
        torch.testing.assert_close(attn_out, module_out, atol=ATOL, rtol=0)  # q/k/v split is the module's
        torch.testing.assert_close(out[f"b{i}.q"], q, atol=ATOL, rtol=0)
        torch.testing.assert_close(out[f"b{i}.k"], k, atol=ATOL, rtol=0)


def test_qk_recomputed_from_residual_streams(bb, out):
    depth, spec = bb.spec["depth"], bb.spec
    w = bb.frozen_weights(list(range(depth)))
    for i in range(depth):
        keys = [f"b{i}.{n}.{p}" for n in ("ln_1", "q", "k") for p in ("weight", "bias")]
        assert all(w[key].dtype == np.float32 for key in keys)
        t = {key: torch.from_numpy(w[key]) for key in keys}
        residual = out["embed.tokens"] if i == 0 else out[f"b{i - 1}.tokens"]
        q, k = qk_from_residual(
            residual,
            ln_weight=t[f"b{i}.ln_1.weight"], ln_bias=t[f"b{i}.ln_1.bias"],
            q_weight=t[f"b{i}.q.weight"], q_bias=t[f"b{i}.q.bias"],
            k_weight=t[f"b{i}.k.weight"], k_bias=t[f"b{i}.k.bias"],
            num_heads=spec["heads"], eps=spec["ln_eps"],
        )  # fmt: skip
        torch.testing.assert_close(q, out[f"b{i}.q"], atol=ATOL, rtol=0)
        torch.testing.assert_close(k, out[f"b{i}.k"], atol=ATOL, rtol=0)
    names = ("ln_1.weight", "ln_1.bias", "q.weight", "q.bias", "k.weight", "k.bias")
    assert set(bb.frozen_weights([-1])) == {f"b{depth - 1}.{n}" for n in names}


def test_frozen_and_eval(bb, out):
    assert bb.qk_recomputable
    assert all(not p.requires_grad for p in bb.parameters())
    assert not any(m.training for m in bb.modules())
    bb.train()
    assert not any(m.training for m in bb.modules())
    assert all(not t.requires_grad for t in out.values())


def test_forward_stops_after_deepest_requested_block(bb, frames):
    blocks, _ = parts(bb)
    ran = []
    handle = blocks[-1].register_forward_hook(lambda *_: ran.append(True))
    bb.forward_tensors(frames, [TensorRequest("b0", "tokens"), TensorRequest("embed", "cls")])
    assert not ran
    bb.forward_tensors(frames, [TensorRequest("b0", "tokens"), TensorRequest("final", "cls")])
    handle.remove()
    assert ran


def test_resolve_normalises_negative_blocks_and_drops_duplicates(bb):
    last = bb.spec["depth"] - 1
    got = bb.resolve([TensorRequest("b-1", "q"), TensorRequest(f"b{last}", "q"), TensorRequest("b-1", "k")])
    assert got == [TensorRequest(f"b{last}", "q"), TensorRequest(f"b{last}", "k")]
    assert TensorRequest.from_name("b-1.pooled", 2) == TensorRequest("b-1", "pooled", 2)


# ------------------------------------------------------------------------------------------ weights files
def _perturbed_state(bb):
    gen = torch.Generator().manual_seed(2)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in bb.model.state_dict().items()}


@pytest.mark.parametrize(
    "fmt, wrap",
    [
        ("pt", lambda sd: sd),
        ("pt", lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}),  # DDP checkpoint
        ("safetensors", lambda sd: sd),
    ],
    ids=["plain", "ddp-checkpoint", "safetensors"],
)
def test_weights_file_roundtrip(bb, frames, tmp_path, fmt, wrap):
    state = _perturbed_state(bb)
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(wrap(state), path)
    loaded = build_backbone(bb.spec["name"], weights_file=str(path))
    assert loaded.spec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.spec["weights_file"] == str(path.resolve())
    reference = build_backbone(bb.spec["name"])
    reference.model.load_state_dict(state)
    reqs = all_requests(bb)
    got, ref = loaded.forward_tensors(frames, reqs), reference.forward_tensors(frames, reqs)
    original = bb.forward_tensors(frames, reqs)
    for name in got:
        assert torch.equal(got[name], ref[name]), name
    assert not torch.allclose(got["final.cls"], original["final.cls"])  # the file was really used
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.model.training


def test_open_clip_full_model_state_dict(tmp_path):
    bb = build_backbone("test_openclip_vit")
    state = {f"visual.{k}": v for k, v in _perturbed_state(bb).items()}
    state["text.token_embedding.weight"] = torch.zeros(4, 4)  # a text tower is ignored
    torch.save(state, tmp_path / "clip.pt")
    loaded = build_backbone("test_openclip_vit", weights_file=tmp_path / "clip.pt")
    assert torch.equal(loaded.model.conv1.weight, state["visual.conv1.weight"])


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        (b"not a checkpoint", "cannot read weights file"),
        ({"bogus.weight": torch.zeros(2)}, "do not fit"),
        ([1, 2, 3], "expected a state dict"),
    ],
    ids=["missing", "garbage", "wrong-keys", "not-a-dict"],
)
def test_bad_weights_files(tmp_path, content, match):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=match):
        build_backbone("test_timm_vit", weights_file=path)
    assert issubclass(WeightsError, FileNotFoundError)


# ------------------------------------------------------------------------------------------- bad requests
BAD_REQUESTS = [
    (TensorRequest("b3", "tokens"), r"block 3 is out of range for 3 blocks; expected b0\.\.b2"),
    (TensorRequest("b-4", "cls"), r"block -4 is out of range.*b-3\.\.b-1"),
    (TensorRequest("block1", "cls"), r"unknown layer 'block1'; expected 'embed', 'b0'\.\.'b2' or 'final'"),
    (TensorRequest("b0", "values"), r"unknown kind 'values'"),
    (TensorRequest("b0", "pooled"), r"b0\.pooled needs pool in 1\.\.4.*got None"),
    (TensorRequest("b0", "pooled", 5), r"needs pool in 1\.\.4.*got 5"),
    (TensorRequest("embed", "pooled", 0), r"needs pool in 1\.\.4.*got 0"),
    (TensorRequest("b0", "tokens", 2), r"pool=2 only applies to kind 'pooled'"),
    (TensorRequest("final", "q"), r"kind 'q' is not available on layer 'final'"),
    (TensorRequest("final", "tokens"), r"kind 'tokens' is not available on layer 'final'"),
    (TensorRequest("embed", "k"), r"kind 'k' is not available on layer 'embed'"),
]


@pytest.mark.parametrize("request_, match", BAD_REQUESTS, ids=[r.name for r, _ in BAD_REQUESTS])
def test_bad_requests(bb, frames, request_, match):
    for call in (bb.resolve, bb.output_shapes, lambda r: bb.forward_tensors(frames, r)):
        with pytest.raises(ConfigError, match=match):
            call([request_])


def test_every_bad_request_reported_at_once(bb):
    with pytest.raises(ConfigError, match="2 problems") as info:
        bb.resolve([TensorRequest("b9", "q"), TensorRequest("final", "k"), TensorRequest("b0", "q")])
    assert len(info.value.problems) == 2 and isinstance(info.value, ValueError)


def test_conflicting_pool_and_bad_frames_and_layers(bb, frames):
    with pytest.raises(ConfigError, match=r"b0\.pooled requested twice with different pool \(1, 2\)"):
        bb.resolve([TensorRequest("b0", "pooled", 1), TensorRequest("b-3", "pooled", 2)])
    with pytest.raises(ValueError, match=r"input size 20 is not a positive multiple of the patch size 8"):
        bb.forward_tensors(frames[:, :, :20, :20], [TensorRequest("b0", "cls")])
    with pytest.raises(ValueError, match=r"expected square frames"):
        bb.forward_tensors(frames[:, :, :16, :], [TensorRequest("b0", "cls")])
    with pytest.raises(ValueError, match=r"expected normalised floats"):
        bb.forward_tensors(frames.to(torch.uint8), [TensorRequest("b0", "cls")])
    with pytest.raises(ConfigError, match="out of range"):
        bb.frozen_weights([3])


# -------------------------------------------------------------------------------- registry and real names
def test_real_entries_are_registered():
    expected = {
        "openclip_vit_b16.openai", "openclip_vit_l14.openai", "openclip_vit_b16.laion2b",
        "timm_vit_small_patch16_224.augreg_in21k_ft_in1k", "timm_vit_base_patch16_224.augreg2_in21k_ft_in1k",
    }  # fmt: skip
    assert expected <= set(BACKBONES.names())
    with pytest.raises(RegistryError, match="Did you mean 'test_timm_vit'"):
        build_backbone("test_timm_vt")
    with pytest.raises(RegistryError, match="already registered"):
        BACKBONES.register("test_timm_vit")(lambda **_: None)


def _tiny_clip(**_):
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16),
        text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1),
    )
    open_clip.set_model_preprocess_cfg(model, dict(size=32, mean=(0.1, 0.2, 0.3), std=(1, 2, 3)))
    return model


@pytest.fixture
def fake_open_clip(monkeypatch):
    calls = []
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **kw: calls.append((a, kw)) or _tiny_clip())
    return calls


@pytest.mark.parametrize(
    "name, pretrained, arch, tag, quick_gelu",
    [
        ("openclip_vit_b16.openai", None, "ViT-B-16", "openai", True),
        ("openclip_vit_l14.openai", None, "ViT-L-14", "openai", True),
        ("openclip_vit_b16.laion2b", None, "ViT-B-16", "laion2b_s34b_b88k", False),
        ("open_clip:ViT-B-32", "laion2b_s34b_b79k", "ViT-B-32", "laion2b_s34b_b79k", False),
    ],
)
def test_open_clip_builders_pass_names(fake_open_clip, name, pretrained, arch, tag, quick_gelu):
    bb = build_backbone(name, pretrained=pretrained)
    ((args, kwargs),) = fake_open_clip
    assert args == (arch,) and kwargs["pretrained"] == tag and kwargs["force_quick_gelu"] is quick_gelu
    assert bb.spec["name"] == name and bb.spec["pretrained"] == tag and bb.spec["family"] == "open_clip"
    assert bb.spec["mean"] == [0.1, 0.2, 0.3]  # preprocessing comes from the model, not from constants


def test_open_clip_weights_file_keeps_tag_preprocessing(fake_open_clip, tmp_path):
    torch.save(_tiny_clip().state_dict(), tmp_path / "clip.pt")
    bb = build_backbone("openclip_vit_b16.openai", weights_file=tmp_path / "clip.pt")
    ((_, kwargs),) = fake_open_clip
    assert kwargs["pretrained"] is None and kwargs["force_quick_gelu"] is True  # no download
    assert set(kwargs["force_preprocess_cfg"]) >= {"mean", "std", "interpolation"}
    assert bb.spec["pretrained"] == "openai" and len(bb.spec["sha256"]) == 64


def test_open_clip_failures(monkeypatch):
    def offline(*_a, **_kw):
        raise RuntimeError("Failed to download weights")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(WeightsError, match="could not fetch pretrained weights.*weights_file=PATH"):
        build_backbone("openclip_vit_b16.openai")
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-Nope'"):
        build_backbone("open_clip:ViT-Nope")
    with pytest.raises(ConfigError, match="has no pretrained tag 'nope'"):
        build_backbone("open_clip:ViT-B-16", pretrained="nope")
    with pytest.raises(ConfigError, match="random-init test backbone"):
        build_backbone("test_openclip_vit", pretrained="openai")


@pytest.fixture
def fake_timm(monkeypatch):
    calls, create = [], timm.create_model

    def fake(name, **kw):
        calls.append((name, kw))
        return create(
            "test_vit", num_classes=0, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
        )

    monkeypatch.setattr(timm, "create_model", fake)
    return calls


@pytest.mark.parametrize(
    "name, pretrained, full, fetch",
    [
        (
            "timm_vit_small_patch16_224.augreg_in21k_ft_in1k",
            None,
            "vit_small_patch16_224.augreg_in21k_ft_in1k",
            True,
        ),
        (
            "timm_vit_base_patch16_224.augreg2_in21k_ft_in1k",
            None,
            "vit_base_patch16_224.augreg2_in21k_ft_in1k",
            True,
        ),
        ("timm:vit_tiny_patch16_224", "augreg_in21k", "vit_tiny_patch16_224.augreg_in21k", True),
        ("timm:vit_tiny_patch16_224.augreg_in21k", None, "vit_tiny_patch16_224.augreg_in21k", True),
        ("timm:vit_tiny_patch16_224", None, "vit_tiny_patch16_224", False),
    ],
)
def test_timm_builders_pass_names(fake_timm, name, pretrained, full, fetch):
    if not fetch:  # no weights at all: refused unless asked for
        with pytest.raises(ConfigError, match=r"would have random weights .*backbone.random_init=true"):
            build_backbone(name, pretrained=pretrained)
        fake_timm.clear()
    bb = build_backbone(name, pretrained=pretrained, random_init=not fetch)
    ((got, kwargs),) = fake_timm
    assert got == full and kwargs == dict(pretrained=fetch, num_classes=0)
    assert bb.spec["family"] == "timm" and bb.spec["pretrained"] == (full.partition(".")[2] or None)


def test_timm_failures(monkeypatch):
    with pytest.raises(ConfigError, match="unknown timm model 'vit_nope'"):
        build_backbone("timm:vit_nope")
    with pytest.raises(ConfigError, match="already names tag 'augreg_in21k'"):
        build_backbone("timm:vit_tiny_patch16_224.augreg_in21k", pretrained="other")
    create = timm.create_model
    registers = dict(
        num_classes=0, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, reg_tokens=4
    )
    monkeypatch.setattr(timm, "create_model", lambda *_a, **_kw: create("test_vit", **registers))
    with pytest.raises(ConfigError, match="only ViTs with one CLS token and no register tokens"):
        build_backbone("timm:vit_tiny_patch16_224", random_init=True)


def test_timm_qk_norm_q_k_captured_but_not_recomputable(monkeypatch):
    create = timm.create_model
    cfg = dict(num_classes=0, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, qk_norm=True)
    monkeypatch.setattr(timm, "create_model", lambda *_a, **_kw: create("test_vit", **cfg))
    bb = build_backbone("timm:vit_tiny_patch16_224", random_init=True)
    assert not bb.qk_recomputable
    with pytest.raises(ConfigError, match="qk_norm.*store kinds 'q' and 'k' instead"):
        bb.frozen_weights([0])
    frames = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    seen = []
    attn = bb.model.blocks[1].attn
    handle = attn.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    out = bb.forward_tensors(frames, [TensorRequest("b1", "q"), TensorRequest("b1", "k")])
    handle.remove()
    q, k, _ = attn.qkv(seen[0]).reshape(2, 17, 3, 2, 16).unbind(2)  # [N, L, H, Dh] each
    torch.testing.assert_close(out["b1.q"], attn.q_norm(q), atol=ATOL, rtol=0)
    torch.testing.assert_close(out["b1.k"], attn.k_norm(k), atol=ATOL, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", TEST_ENTRIES)
def test_cuda_bf16_autocast(name):
    cpu, gpu = build_backbone(name), build_backbone(name, device="cuda")
    s = cpu.spec["input_size"]
    frames = torch.randn(4, 3, s, s, generator=torch.Generator().manual_seed(3))
    reqs = [TensorRequest("b-1", "tokens"), TensorRequest("b1", "q"), TensorRequest("final", "cls")]
    want, got = cpu.forward_tensors(frames, reqs), gpu.forward_tensors(frames, reqs)
    assert got["b1.q"].dtype == torch.bfloat16 and got["b1.q"].device.type == "cuda"
    for key in want:
        torch.testing.assert_close(got[key].float().cpu(), want[key], atol=0.1, rtol=0.05)
