"""Stage-two heads: a contract every registered head must meet, then head-specific behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.core.errors import CheckpointError, ConfigError, StoreMismatchError
from stages.models import qk_from_residual
from stages.train.heads import HEADS, build_head

WIDTH, DEPTH, N_HEADS, GRID, EMBED = 32, 3, 2, 4, 16
L = 1 + GRID * GRID
T, B, C = 8, 2, 5
BACKBONE = {
    "name": "test", "family": "timm", "width": WIDTH, "depth": DEPTH, "heads": N_HEADS, "grid": GRID,
    "patch_size": 4, "tokens_per_frame": L, "embed_dim": EMBED, "ln_eps": 1e-5,
}  # fmt: skip
# Options the contract tests pass per head (defaults elsewhere): the fake backbone has only 3 blocks.
CONTRACT_OPTIONS: dict[str, dict] = {"evl": {"layers": 3}}


def make_frozen(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    frozen = {}
    for layer in range(DEPTH):
        frozen[f"b{layer}.ln_1.weight"] = 1 + 0.1 * rng.standard_normal(WIDTH)
        frozen[f"b{layer}.ln_1.bias"] = 0.1 * rng.standard_normal(WIDTH)
        for proj in ("q", "k"):
            frozen[f"b{layer}.{proj}.weight"] = 0.3 * rng.standard_normal((WIDTH, WIDTH))
            frozen[f"b{layer}.{proj}.bias"] = 0.1 * rng.standard_normal(WIDTH)
    return {k: v.astype(np.float32) for k, v in frozen.items()}


def make_feats(frozen: dict[str, np.ndarray], frames: int = T, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random residual streams for every layer; q/k/cls consistent with them, as stage one writes them."""
    g = torch.Generator().manual_seed(seed)
    feats = {"embed.tokens": torch.randn(B, frames, L, WIDTH, generator=g)}
    for layer in range(DEPTH):
        tokens = torch.randn(B, frames, L, WIDTH, generator=g)
        residual = feats["embed.tokens" if layer == 0 else f"b{layer - 1}.tokens"]
        w = {k.split(".", 1)[1]: torch.from_numpy(v) for k, v in frozen.items() if k.startswith(f"b{layer}.")}
        q, k = qk_from_residual(
            residual, ln_weight=w["ln_1.weight"], ln_bias=w["ln_1.bias"], q_weight=w["q.weight"],
            q_bias=w["q.bias"], k_weight=w["k.weight"], k_bias=w["k.bias"], num_heads=N_HEADS,
        )  # fmt: skip
        feats.update({f"b{layer}.tokens": tokens, f"b{layer}.cls": tokens[:, :, 0], f"b{layer}.q": q})
        feats[f"b{layer}.k"] = k
    feats["final.cls"] = torch.randn(B, frames, EMBED, generator=g)
    return feats


def shapes(feats: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(x.shape[2:]) for name, x in feats.items()}


@pytest.fixture(scope="module")
def frozen() -> dict[str, np.ndarray]:
    return make_frozen()


@pytest.fixture(scope="module")
def feats(frozen) -> dict[str, torch.Tensor]:
    return make_feats(frozen)


def build(name: str, feats: dict, frozen=None, num_frames: int = T, contract: bool = True, **options):
    options = {**(CONTRACT_OPTIONS.get(name, {}) if contract else {}), **options}
    return build_head(
        name, tensors=shapes(feats), backbone=BACKBONE, num_classes=C, num_frames=num_frames, frozen=frozen,
        **options,
    )  # fmt: skip


@torch.no_grad()
def randomise(module: torch.nn.Module | torch.nn.Parameter, seed: int = 1, scale: float = 0.1) -> None:
    """Perturb every parameter, so zero-initialised ones stop hiding behaviour."""
    g = torch.Generator().manual_seed(seed)
    for p in [module] if isinstance(module, torch.nn.Parameter) else module.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale)


def contract_logits(head, feats):
    """``head(feats)``; a recurrent head (memvit) runs the clip as the second chunk of a stream instead, so
    its memory path (compressor, memory positions) is in the graph too."""
    if not getattr(head, "recurrent", False):
        return head(feats)
    _, memory = head(feats, memory=head.init_memory(B), reset=torch.ones(B, dtype=torch.bool))
    return head(feats, memory=memory, reset=torch.zeros(B, dtype=torch.bool))[0]


# ----------------------------------------------------------------------------------------- contract

ALL_HEADS = HEADS.names()


def test_every_expected_head_is_registered():
    assert {"linear", "vivit_fe", "evl"} <= set(ALL_HEADS)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_contract_output(name, feats, frozen):
    head = build(name, feats, frozen)
    assert set(head.inputs) <= set(feats) and head.inputs
    out = head({n: feats[n] for n in head.inputs})
    assert out.shape == (B, C) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_HEADS)
def test_contract_deterministic_with_seed(name, feats, frozen):
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        head = build(name, feats, frozen).train()  # dropout on: the seed must fix it too
        randomise(head)
        outs.append(head(feats))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(1)  # another seed, another head: the check above can fail
    other = build(name, feats, frozen).train()
    randomise(other)
    assert not torch.equal(other(feats), outs[0])


@pytest.mark.parametrize("name", ALL_HEADS)
def test_contract_gradients_reach_every_parameter(name, feats, frozen):
    torch.manual_seed(0)
    head = build(name, feats, frozen).train()
    params = {n: p for n, p in head.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    labels = torch.arange(B) % C
    for step in range(3):  # zero-initialised layers pass gradients on one step later each
        opt.zero_grad()
        torch.nn.functional.cross_entropy(contract_logits(head, feats), labels).backward()
        if step == 0:
            assert [n for n, p in params.items() if p.grad is None] == []
        opt.step()
    assert [n for n, p in params.items() if torch.equal(p, before[n])] == []
    assert all(b.grad is None and not b.requires_grad for b in head.buffers())


@pytest.mark.parametrize("name", ALL_HEADS)
def test_contract_bf16_autocast(name, feats, frozen):
    torch.manual_seed(0)
    head = build(name, feats, frozen).eval()
    randomise(head)
    with torch.no_grad():
        ref = contract_logits(head, feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = contract_logits(head, feats)
    assert out.shape == (B, C) and out.is_floating_point() and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-2


# ----------------------------------------------------------------------------------------- store mismatch


def only(*names):
    return lambda feats: {n: feats[n] for n in names}


def without(*prefixes):
    return lambda feats: {n: x for n, x in feats.items() if not n.startswith(prefixes)}


MISMATCHES = [  # head, store view, pass frozen, options, expected message
    ("evl", without("b0."), True, {"layers": 3}, r"3 blocks.*missing \['b0\.tokens'\].*options\.layers=2"),
    ("evl", without(), True, {}, r"layers=4 exceeds the backbone's 3 blocks"),
    ("evl", without("b0.q", "b0.k", "b1.q", "b1.k", "b2.q", "b2.k"), False, {"layers": 2},
     r"block 1: neither 'b1\.q'\+'b1\.k'.*frozen b1\.ln_1\.weight.*cross_frame=false"),
    ("evl", only("b1.tokens", "b2.tokens"), True, {"layers": 2},
     r"block 1: .*missing \['b1\.q', 'b1\.k', 'b0\.tokens'\]"),
    ("vivit_fe", only("final.cls"), False, {"adapter": "query"}, r"'b\*\.tokens'.*options\.adapter=mlp"),
    ("vivit_fe", without(), False, {"adapter": "query", "tokens_layer": "b7"}, r"'b7\.tokens' is not"),
    ("vivit_fe", only("embed.tokens"), False, {}, r"holds none of 'final\.cls', 'b\*\.cls', 'b\*\.tokens'"),
    ("linear", without(), False, {"feature": "b9.cls"}, r"options\.feature='b9\.cls' is not in"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "view", "with_frozen", "options", "match"), MISMATCHES)
def test_store_mismatch_is_refused_with_a_fix(name, view, with_frozen, options, match, feats, frozen):
    with pytest.raises(StoreMismatchError, match=match):
        build(name, view(feats), frozen if with_frozen else None, contract=False, **options)


BAD_OPTIONS = [
    ("vivit_fe", {"heads": 5}, r"head\.options\.heads=5 must be a positive divisor of the width 16"),
    ("vivit_fe", {"adapter": "lora"}, r"head\.options\.adapter='lora' is unknown"),
    ("evl", {"layers": 0}, r"head\.options\.layers=0 must be >= 1"),
    ("evl", {"activation": "relu6"}, r"activation 'relu6' is unknown"),
    ("linear", {"feature": "b2.q"}, r"not a '\*\.cls' or '\*\.tokens'"),
]


@pytest.mark.parametrize(("name", "options", "match"), BAD_OPTIONS)
def test_bad_options_are_config_errors(name, options, match, feats, frozen):
    with pytest.raises(ConfigError, match=match):
        build(name, feats, frozen, **options)


def test_unknown_option_is_a_type_error(feats):
    with pytest.raises(TypeError, match="depht"):
        build("vivit_fe", feats, depht=2)


# ----------------------------------------------------------------------------------------- linear


@pytest.mark.parametrize(
    ("view", "options", "expected"),
    [
        (without(), {}, "final.cls"),
        (without("final."), {}, "b2.cls"),
        (only("b2.cls"), {}, "b2.cls"),
        (only("b1.tokens", "b2.tokens"), {}, "b2.tokens"),
        (without(), {"feature": "b0.tokens"}, "b0.tokens"),
    ],
)
def test_linear_feature_choice(view, options, expected, feats):
    store = view(feats)
    head = build("linear", store, **options)
    assert head.inputs == [expected]
    cls = store[expected][:, :, 0] if expected.endswith("tokens") else store[expected]
    assert torch.allclose(head(store), head.classifier(cls.mean(1)))


# ----------------------------------------------------------------------------------------- vivit_fe


@pytest.mark.parametrize("adapter", ["mlp", "query"])
def test_vivit_adapter_is_identity_at_init(adapter, feats):
    head = build("vivit_fe", feats, adapter=adapter)
    x = feats["final.cls"]
    assert torch.equal(head.adapter(x, feats), x)
    randomise(head.adapter)  # the check can fail: a trained adapter changes its input
    assert not torch.allclose(head.adapter(x, feats), x)


def test_vivit_query_adapter_reads_patch_tokens(feats):
    head = build("vivit_fe", feats, adapter="query", tokens_layer="b1")
    assert head.inputs == ["final.cls", "b1.tokens"]


@pytest.mark.parametrize("adapter", ["mlp", "query", "none"])
def test_vivit_logits_are_zero_at_init(adapter, feats):
    assert torch.equal(build("vivit_fe", feats, adapter=adapter)(feats), torch.zeros(B, C))


def test_vivit_projection_when_dim_differs(feats):
    head = build("vivit_fe", feats, dim=24, heads=3, depth=1)
    assert head.pos_embed.shape == (1, 1 + T, 24) and isinstance(head.proj, torch.nn.Linear)


def test_vivit_8_to_32_frames_keeps_trained_weights(frozen):
    feats8, feats32 = make_feats(frozen, 8), make_feats(frozen, 32)
    torch.manual_seed(0)
    head8 = build("vivit_fe", feats8, num_frames=8, adapter="query")
    randomise(head8)  # "trained"
    head32 = build("vivit_fe", feats32, num_frames=32, adapter="query")
    report = head32.load_from(head8.state_dict())
    assert report["interpolated"] == ["pos_embed"] and report["missing"] == []
    old, new = head8.state_dict(), head32.state_dict()
    assert [k for k in old if k != "pos_embed" and not torch.equal(old[k], new[k])] == []
    pe8, pe32 = old["pos_embed"], new["pos_embed"]
    assert pe32.shape == (1, 33, EMBED) and torch.equal(pe32[:, 0], pe8[:, 0])
    assert torch.equal(pe32[:, 1], pe8[:, 1]) and torch.equal(pe32[:, -1], pe8[:, -1])
    out = head32(feats32)
    assert out.shape == (B, C) and torch.isfinite(out).all() and out.abs().sum() > 0


def test_vivit_adapter_added_after_a_run_without_one(feats):
    """Gowda et al.: stage one has no adapter; stage two adds one, identity at init: same logits."""
    torch.manual_seed(0)
    plain = build("vivit_fe", feats, adapter="none").eval()
    randomise(plain)
    adapted = build("vivit_fe", feats, adapter="mlp").eval()
    report = adapted.load_from(plain.state_dict())
    assert report["missing"] and all(k.startswith("adapter.") for k in report["missing"])
    assert torch.equal(adapted(feats), plain(feats))


def test_vivit_load_from_refuses_another_architecture(feats):
    deep, shallow = build("vivit_fe", feats, depth=2), build("vivit_fe", feats, depth=1)
    with pytest.raises(CheckpointError, match=r"blocks\.1\..*strict=False"):
        shallow.load_from(deep.state_dict())
    assert shallow.load_from(deep.state_dict(), strict=False)["unexpected"]


def test_vivit_takes_other_clip_lengths_with_its_position_embedding_resized(frozen, feats):
    """Multigrid's long cycle feeds 2- and 4-frame clips to a head built for 8: the temporal position
    embedding is resized as load_from does, and the gradient reaches the 8-row table."""
    torch.manual_seed(0)
    head = build("vivit_fe", feats, depth=1).eval()
    randomise(head)
    short = make_feats(frozen, 4)
    resized = build("vivit_fe", short, num_frames=4, depth=1).eval()
    resized.load_from(head.state_dict())  # the same head built for 4 frames
    assert head.variable_frames and torch.allclose(head(short), resized(short), atol=1e-6)
    head(short).sum().backward()
    assert head.pos_embed.grad is not None and head.pos_embed.grad[:, 1:].abs().sum() > 0


# ----------------------------------------------------------------------------------------- evl


def stored_and_recomputed(feats, frozen):
    torch.manual_seed(0)
    stored = build("evl", feats, frozen).eval()
    randomise(stored)  # non-zero W tables, so q/k matter
    no_qk = {n: x for n, x in feats.items() if not n.endswith((".q", ".k"))}
    recomputed = build("evl", no_qk, frozen).eval()
    recomputed.load_state_dict(stored.state_dict())
    return stored, recomputed, no_qk


def test_evl_temporal_modules_add_exactly_zero_at_init(feats, frozen):
    head = build("evl", feats, frozen)
    assert head.layers == [0, 1, 2]
    for i, layer in enumerate(head.layers):
        assert torch.equal(head.memory_tokens(feats, i), feats[f"b{layer}.tokens"])
    for module in ("conv", "pos", "cross"):  # each module, once trained, changes the memory
        trained = build("evl", feats, frozen)
        randomise(getattr(trained.temporal[1], module))
        assert not torch.allclose(trained.memory_tokens(feats, 1), feats["b1.tokens"]), module


def test_evl_cross_frame_skips_cls_and_clip_ends(feats, frozen):
    head = build("evl", feats, frozen, temporal_conv=False, temporal_pos=False)
    randomise(head.temporal[0].cross.w_next)  # only look-ahead: the last frame gets nothing
    delta = head.memory_tokens(feats, 0) - feats["b0.tokens"]  # [B, T, L, d]
    assert (delta[:, :, 0] == 0).all() and (delta[:, -1] == 0).all() and (delta[:, :-1, 1:] != 0).any()


def naive_cross_frame(tokens, q, k, w_prev, w_next):
    """EVL cross-frame attention written out frame by frame and patch by patch, as the paper says."""
    out, (_, frames, _, heads, dh) = tokens.clone(), q.shape
    coords = [(p // GRID, p % GRID) for p in range(GRID * GRID)]
    offset = [
        [(pi - ki + GRID - 1) * (2 * GRID - 1) + pj - kj + GRID - 1 for ki, kj in coords] for pi, pj in coords
    ]
    for t in range(frames):
        for s, table in ((t - 1, w_prev), (t + 1, w_next)):
            if 0 <= s < frames:
                maps = [
                    (q[:, t, 1:, h] @ k[:, s, 1:, h].transpose(1, 2) / dh**0.5).softmax(-1)
                    for h in range(heads)
                ]
                affinity = torch.stack(maps).mean(0)  # [B, P, P]
                for p, rows in enumerate(offset):
                    out[:, t, 1 + p] += affinity[:, p] @ table[rows]
    return out


def test_evl_cross_frame_matches_a_naive_reference(feats, frozen):
    head = build("evl", feats, frozen, temporal_conv=False, temporal_pos=False)
    cross = head.temporal[2].cross
    randomise(cross)
    expected = naive_cross_frame(feats["b2.tokens"], feats["b2.q"], feats["b2.k"], cross.w_prev, cross.w_next)
    assert torch.allclose(head.memory_tokens(feats, 2), expected, atol=1e-5)


def test_evl_recomputed_qk_equals_stored(feats, frozen):
    stored, recomputed, no_qk = stored_and_recomputed(feats, frozen)
    assert stored.qk_source == "stored" and recomputed.qk_source == "recomputed"
    assert "embed.tokens" in recomputed.inputs and "b2.q" not in recomputed.inputs
    with torch.no_grad():
        assert torch.allclose(recomputed(no_qk), stored(feats), atol=1e-5)
        assert not torch.allclose(build("evl", feats, frozen).eval()(feats), stored(feats))


def test_evl_frozen_qk_weights_are_buffers_outside_the_checkpoint(feats, frozen):
    _, recomputed, no_qk = stored_and_recomputed(feats, frozen)
    assert not [n for n, _ in recomputed.named_parameters() if "frozen" in n]
    assert not [k for k in recomputed.state_dict() if "frozen" in k]
    assert len([n for n, _ in recomputed.named_buffers() if n.startswith("frozen_qk.")]) == 3 * 6
    recomputed(no_qk).sum().backward()
    assert all(b.grad is None for b in recomputed.buffers())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # recompute stays fp32 and exact
        q, _ = recomputed.qk(no_qk, 1)
    assert q.dtype == torch.float32 and torch.allclose(q, feats["b1.q"], atol=1e-6)


def test_evl_without_cross_frame_needs_no_qk(feats):
    tokens_only = {n: x for n, x in feats.items() if n.endswith(".tokens") and n != "embed.tokens"}
    head = build("evl", tokens_only, cross_frame=False, layers=2)
    assert head.qk_source is None and head.inputs == ["b1.tokens", "b2.tokens"]
    assert head(tokens_only).shape == (B, C)


def test_evl_takes_other_clip_lengths_and_says_which_grids_it_takes(feats, frozen):
    torch.manual_seed(0)
    head = build("evl", feats, frozen).eval()
    randomise(head)
    short = make_feats(frozen, 4)
    out = head(short)  # the temporal position tables resized from 8 rows to 4 (ends kept)
    assert out.shape == (B, C) and torch.isfinite(out).all()
    same = build("evl", short, frozen, num_frames=4).eval()
    state = head.state_dict()
    from stages.models.posemb import resize_rows

    state = {k: resize_rows(v, 4) if k.endswith(".pos") else v for k, v in state.items()}
    same.load_state_dict(state)
    assert torch.allclose(out, same(short), atol=1e-5)
    assert head.variable_frames and not head.variable_grid  # cross-frame tables fit one patch grid
    assert build("evl", feats, frozen, cross_frame=False).variable_grid


def test_input_norm_standardises_and_survives_a_batch_of_one() -> None:
    from stages.train.heads.blocks import FeatureNorm

    norm = FeatureNorm(8).train()
    x = 10.0 + 0.01 * torch.randn(64, 3, 8)  # tiny differences on a large offset, as a weak backbone gives
    y = norm(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.reshape(-1, 8).mean(0), torch.zeros(8), atol=1e-2, rtol=0)
    torch.testing.assert_close(y.reshape(-1, 8).std(0), torch.ones(8), atol=1e-2, rtol=0)
    assert torch.isfinite(norm(x[:1, :1])).all()  # one row in training mode: running statistics
    head = HEADS.get("linear")(
        tensors={"final.cls": (8,)}, backbone={}, num_classes=3, num_frames=3, input_norm=True
    )
    assert head({"final.cls": x[:1]}).shape == (1, 3)
