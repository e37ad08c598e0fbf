"""The ``memvit`` memory head: stop-gradient memory, pipelined compression, resets at video boundaries,
M = 0 as the plain head, online inference with flat memory, and memory beating no memory on longrange."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.commands.evaluate import main as eval_main
from stages.core.errors import ConfigError, StoreMismatchError
from stages.train.heads import build_head
from stages.train.online import memory_bytes, online_loader, run_online
from stages.train.stage import run_train
from store import (
    FeatureStore,
    PartWriter,
    StoreSpec,
    TensorSpec,
    VideoEntry,
    ViewRows,
    create_store,
    finalize,
)
from tests.stages.train.conftest import EMBED, backbone, make_cfg

T, B, C, D = 8, 3, 2, 16


def make_longrange_store(path: Path, *, videos: int, rows: int, cue_rows: int = 8, seed: int = 0) -> Path:
    """Feature-space ``longrange``: frames are noise, except the first ``cue_rows`` frames, which carry
    +-axis by class. Only the first chunk tells the label; a head without memory is at chance after it."""
    spec = StoreSpec(backbone=backbone(), preprocessing={"input_size": 8},
                     tensors=(TensorSpec("final.cls", "final", "cls", (EMBED,)),),
                     sampling={"mode": "dense", "target_fps": 8.0}, classes=("red", "green"),
                     config={"test": "longrange", "rows": rows}, storage={"shard_mb": 1.0})  # fmt: skip
    create_store(path, spec)
    axis = np.random.default_rng(999).standard_normal(EMBED)
    axis /= np.linalg.norm(axis)
    with PartWriter(path, "p0000", commit_interval_s=3600.0) as w:
        for i in range(videos):
            rng, label = np.random.default_rng([seed, i]), i % 2
            x = 0.5 * rng.standard_normal((rows, EMBED))  # [rows, E]
            x[:cue_rows] += (1.0 if label else -1.0) * axis
            view = ViewRows(view=0, tensors={"final.cls": x}, time_s=np.arange(rows) / 8.0,
                            frame_index=np.arange(rows), meta={})  # fmt: skip
            w.add(VideoEntry(id=f"v{i:03d}", label=label, source=f"/synthetic/v{i:03d}.mp4", fps=8.0,
                             num_frames=rows), [view])  # fmt: skip
    finalize(path)
    return path


def head(memory: int = 2, seed: int = 0, **options):
    torch.manual_seed(seed)
    h = build_head("memvit", tensors={"final.cls": (D,)}, backbone={}, num_classes=C, num_frames=T,
                   memory=memory, **options)  # fmt: skip
    torch.nn.init.normal_(h.classifier.weight, std=0.5)  # zero at init hides every other gradient
    return h


def chunks(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"final.cls": torch.randn(B, T, D, generator=g)} for _ in range(n)]


def run(h, feats: list[dict], resets: list[bool], memory=None):
    """Logits of each chunk, fed in order; ``resets[i]``: every stream starts a new video at chunk i."""
    memory, out = memory if memory is not None else h.init_memory(B), []
    for x, r in zip(feats, resets, strict=True):
        logits, memory = h(x, memory=memory, reset=torch.full((B,), r))
        out.append(logits)
    return out, memory


# ----------------------------------------------------------------------------------------- gradients


def test_memory_carries_no_gradient_into_earlier_chunks():
    h = head()
    first, second = chunks(2)
    first["final.cls"].requires_grad_(True)
    logits, memory = h(first, memory=h.init_memory(B), reset=torch.ones(B, dtype=torch.bool))
    assert not any(t.requires_grad for t in [*memory["prev"], *memory["entries"]])
    out, _ = h(second, memory=memory, reset=torch.zeros(B, dtype=torch.bool))
    out.sum().backward()
    assert first["final.cls"].grad is None  # memory is detached: nothing flows back to chunk 1
    other = chunks(1, seed=5)[0]  # ...yet chunk 1 does shape chunk 2's output
    _, other_memory = h(other, memory=h.init_memory(B), reset=torch.ones(B, dtype=torch.bool))
    assert not torch.allclose(h(second, memory=other_memory)[0], out)


def test_the_compressor_learns_through_the_pipelined_path():
    h = head(memory=2)
    compress = h.blocks[0].compress
    first, second, third = chunks(3)
    logits, memory = h(first, memory=h.init_memory(B), reset=torch.ones(B, dtype=torch.bool))
    logits.sum().backward()  # chunk 1: no earlier chunk, memory all masked: nothing to compress yet
    assert compress.conv.weight.grad.abs().sum() == 0
    h.zero_grad()
    out, memory2 = h(second, memory=memory)  # chunk 2 compresses chunk 1's memory now, and uses it
    out.sum().backward()
    assert compress.conv.weight.grad.abs().sum() > 0 and compress.norm.weight.grad.abs().sum() > 0
    assert h.blocks[1].mem_pos.grad.abs().sum() > 0
    with torch.no_grad():  # chunk 1's memory stays in the cache compressed and detached
        assert torch.equal(memory2["entries"][0][:, 0], compress(memory["prev"][0]))
        assert memory2["entries"][0].shape == (B, 1, 1 + T // 4, D)  # S-1 = 1 slot, CLS + T/4 tokens


def test_compression_starts_as_an_average_pool():
    h = head(memory=1)
    compress, x = h.blocks[0].compress, torch.randn(B, 1 + T, D)
    pooled = F.avg_pool1d(x[:, 1:].transpose(1, 2), 7, 4, padding=3, count_include_pad=True)  # [B, D, 2]
    want = F.layer_norm(torch.cat([x[:, :1], pooled.transpose(1, 2)], dim=1), (D,))
    assert compress.kernel == (7, 1, 1) and torch.allclose(compress(x), want, atol=1e-5)


# ----------------------------------------------------------------------------------------- boundaries


def test_a_reset_makes_a_stream_independent_of_the_previous_video():
    h = head(memory=3, memory_every=2).eval()
    video_a, video_b, new = chunks(4, seed=1), chunks(4, seed=2), chunks(2, seed=3)
    _, after_a = run(h, video_a, [True, False, False, False])
    _, after_b = run(h, video_b, [True, False, False, False])
    reset = torch.tensor([True, False, True])  # streams 0 and 2 start a new video, stream 1 goes on
    with torch.no_grad():
        out_a, mem_a = h(new[0], memory=after_a, reset=reset)
        out_b, mem_b = h(new[0], memory=after_b, reset=reset)
        next_a, _ = h(new[1], memory=mem_a)
        next_b, _ = h(new[1], memory=mem_b)
    assert torch.equal(out_a[[0, 2]], out_b[[0, 2]]) and torch.equal(next_a[[0, 2]], next_b[[0, 2]])
    assert not torch.allclose(out_a[1], out_b[1])  # the stream without a reset remembers its own video
    fresh = h(new[0])  # a reset stream sees only the current chunk: the memory-free output
    assert torch.allclose(out_a[0], fresh[0], atol=1e-5)


def test_memory_zero_is_the_plain_head_bit_for_bit():
    plain = head(memory=0)
    assert not [n for n, _ in plain.named_parameters() if "compress" in n or "mem_pos" in n]
    feats = chunks(4)
    streamed, memory = run(plain, feats, [True, False, True, False])
    assert memory == {} and all(torch.equal(s, plain(x)) for s, x in zip(streamed, feats, strict=True))
    with_memory = head(memory=2)  # the memory head, its memory left unused, is the same network
    with_memory.load_state_dict(plain.state_dict(), strict=False)
    assert all(torch.equal(with_memory(x), plain(x)) for x in feats)
    assert not torch.equal(run(with_memory, feats, [True] + [False] * 3)[0][3], plain(feats[3]))


def test_memory_slots_support_and_grid_features():
    h = head(memory=3, memory_every=2)
    s = h.shape
    assert (s.slots, s.selected, s.support, h.temporal_support) == (5, [0, 2, 4], 6, 6 * T)
    assert head(memory=0).temporal_support == T
    torch.manual_seed(0)
    grid = build_head("memvit", tensors={"b1.pooled": (16, D)}, backbone={}, num_classes=C, num_frames=T,
                      feature="b1.pooled", memory=2, compress=[4, 2, 2])  # fmt: skip
    assert grid.shape.tokens == 1 + 2 * 2 * 2  # CLS + T/4 x (4/2)^2 cells
    x = {"b1.pooled": torch.randn(B, T, 16, D)}
    logits, memory = run(grid, [x, x], [True, False])
    assert logits[1].shape == (B, C) and memory["entries"][0].shape == (B, 1, 9, D)


BAD = [
    ({"memory": -1}, ConfigError, r"memory=-1 must be >= 0"),
    ({"compress": [4, 2]}, ConfigError, r"compress=\[4, 2\] must be 3 strides"),
    ({"memory_layers": [5]}, ConfigError, r"memory_layers=\[5\] must be block numbers in 0\.\.1"),
    ({"feature": "b9.pooled"}, StoreMismatchError, r"'b9\.pooled' is not in the store"),
]


@pytest.mark.parametrize(("options", "error", "match"), BAD)
def test_bad_options_say_what_to_do(options, error, match):
    with pytest.raises(error, match=match):
        build_head("memvit", tensors={"final.cls": (D,)}, backbone={}, num_classes=C, num_frames=T, **options)


def test_a_chunk_of_another_length_is_refused():
    with pytest.raises(ConfigError, match=r"chunks of 8 frames but got 5.*data\.frames=8"):
        head()({"final.cls": torch.randn(B, 5, D)})


# ----------------------------------------------------------------------------------------- online


def test_online_inference_over_a_long_video_holds_memory_flat(tmp_path):
    path = make_longrange_store(tmp_path / "long.zarr", videos=2, rows=20 * T)  # 20 chunks per video
    fs, reads, sizes = FeatureStore(path), [], []
    read_clips = fs.read_clips
    fs.read_clips = lambda clips, **kw: reads.append([len(r) for _, _, r in clips]) or read_clips(clips, **kw)
    h = head(memory=2).eval()
    loader = online_loader(fs, ["v000", "v001"], frames=T, stride=1, tensors=h.inputs, streams=1)
    result = run_online(
        h,
        loader.batches(),
        num_videos=2,
        num_classes=C,
        device=torch.device("cpu"),
        keep_chunks=True,
        on_step=lambda batch, memory: sizes.append(memory_bytes(memory)),
    )
    assert len(reads) == len(sizes) == 40 and all(r == [T] for r in reads)  # one chunk per step
    assert len(set(sizes)) == 1 and sizes[0] == memory_bytes(h.init_memory(1))  # flat in video length
    assert result.chunks.tolist() == [20, 20] and len(result.per_chunk) == 40


# ----------------------------------------------------------------------------------------- longrange


@pytest.fixture(scope="module")
def longrange_runs(tmp_path_factory):
    """memvit with M = 3 and with M = 0 (same seed, same streams) on feature-space longrange: 4 chunks of
    8 frames per video, the cue in the first."""
    root = tmp_path_factory.mktemp("longrange")
    store = make_longrange_store(root / "lr.zarr", videos=96, rows=4 * T)
    runs = {}
    for m in (3, 0):
        cfg = make_cfg(root / f"m{m}", store, head={"name": "memvit", "options": {"memory": m, "depth": 1}},
                       data={"frames": T, "batch_size": 8, "val_fraction": 0.33},
                       optim={"epochs": 6, "lr": 3e-3}, run={"eval_every": 6})  # fmt: skip
        runs[m] = run_train(cfg)
    return store, root, runs


def test_memory_beats_no_memory_at_the_last_chunk_of_longrange(longrange_runs):
    _, _, runs = longrange_runs
    assert runs[3]["videos"] == runs[0]["videos"] > 20
    assert runs[3]["top1"] >= 0.85 and runs[3]["top1"] - runs[0]["top1"] >= 0.25, (runs[3], runs[0])


def test_eval_runs_a_memvit_checkpoint_online_with_per_chunk_predictions(longrange_runs, capsys):
    store, root, runs = longrange_runs
    assert eval_main([str(root / "m3" / "last.pt"), str(store), "--json", "--workers", "0"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert (
        m["head"] == "memvit"
        and m["top1"] == pytest.approx(runs[3]["top1"])
        and m["videos"] == runs[3]["videos"]
    )
    assert m["clips"] == 4 * m["videos"] and {"top1_mean", "chunk_top1"} <= set(m)
    some = next(iter(m["per_video"].values()))
    assert [c["chunk"] for c in some] == [0, 1, 2, 3] and {"pred", "prob"} <= set(some[0])
    assert eval_main([str(root / "m3" / "last.pt"), str(store), "--workers", "0"]) == 0
    assert "last chunk" in capsys.readouterr().out
