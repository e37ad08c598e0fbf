"""Stream-ordered chunks for memory heads: every chunk once per epoch in order, resets where a stream
starts a video, pure functions of (seed, epoch, step), DDP shares, segments, and an exact mid-epoch resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.core.errors import ConfigError
from stages.train import streams
from stages.train.stage import run_train
from stages.train.streams import StreamDataset, StreamLoader, StreamPlan, chunk_count, chunk_rows
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
from tests.stages.train.conftest import EMBED, backbone, make_cfg, read_jsonl

T = 4


@pytest.fixture(scope="module")
def ragged_store(tmp_path_factory) -> Path:
    """11 videos of 5..25 rows (2..7 chunks of 4), dense; video i's row r holds the value 32 i + r."""
    path = tmp_path_factory.mktemp("streams") / "ragged.zarr"
    rows = [5 + (7 * i) % 21 for i in range(11)]
    write_store(path, [(f"v{i:02d}", i % 4, f"/s/v{i:02d}.mp4", 0.0, n, 32 * i) for i, n in enumerate(rows)])
    return path


def write_store(path: Path, videos: list[tuple[str, int, str, float, int, int]]) -> Path:
    """Videos (id, label, source, start time, rows, base value): every feature of row r = base + r."""
    spec = StoreSpec(backbone=backbone(), preprocessing={"input_size": 8},
                     tensors=(TensorSpec("final.cls", "final", "cls", (EMBED,)),),
                     sampling={"mode": "dense", "target_fps": 1.0}, classes=("a", "b", "c", "d"),
                     config={"test": "streams"}, storage={"shard_mb": 1.0})  # fmt: skip
    create_store(path, spec)
    with PartWriter(path, "p0000", commit_interval_s=3600.0) as w:
        for vid, label, source, start, n, base in videos:
            x = np.repeat(base + np.arange(n, dtype=np.float32)[:, None], EMBED, axis=1)  # [n, E]
            view = ViewRows(view=0, tensors={"final.cls": x}, time_s=start + np.arange(n, dtype=np.float64),
                            frame_index=np.arange(n), meta={})  # fmt: skip
            w.add(VideoEntry(id=vid, label=label, source=source, fps=1.0, num_frames=n), [view])
    finalize(path)
    return path


def dataset(store: Path, mode: str = "train", streams: int = 3, **kw) -> StreamDataset:
    fs = FeatureStore(store)
    return StreamDataset(fs, [v.id for v in fs.videos], T, 1, ["final.cls"], streams=streams, mode=mode, **kw)


def read(ds: StreamDataset, epoch: int) -> list[dict]:
    return [ds[(epoch, b)] for b in range(len(ds))]


def rows_of(batch: dict) -> np.ndarray:
    """(video, first row) each stream read, from the stored values 32 video + row (exact in float16)."""
    first = batch["feats"]["final.cls"][:, 0, 0].astype(np.int64)  # [B]
    return np.stack([first // 32, first % 32], axis=1)  # [B, 2]


# ----------------------------------------------------------------------------------------- plans


def test_chunks_cover_a_video_and_jitter_keeps_their_count():
    assert [chunk_count(n, 4, 1) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]
    assert chunk_rows(10, 4, 1, 2).tolist() == [8, 9, 9, 9]  # the last chunk repeats the last row
    assert chunk_rows(10, 4, 1, 0, offset=3).tolist() == [0, 0, 0, 0]  # jitter: the grid starts 3 rows early
    assert chunk_rows(10, 4, 1, 1, offset=3).tolist() == [1, 2, 3, 4]
    assert chunk_rows(20, 4, 2, 1).tolist() == [8, 10, 12, 14]  # stride 2: a chunk spans 8 rows


def test_training_streams_read_every_chunk_once_in_order(ragged_store):
    ds = dataset(ragged_store, jitter=False)
    total = int(ds._chunks.sum())
    assert len(ds) == -(-total // 3)  # ceil(chunks / streams), the same every epoch
    seen, batches = Counter(), read(ds, epoch=0)
    for s in range(3):
        previous, ended = None, False
        for batch in batches:
            if batch["weight"][s] == 0:  # an ended stream: flagged reset, read with weight 0 to the end
                assert batch["reset"][s] and batch["video"][s] == -1
                ended = True
                continue
            assert not ended
            video, row = rows_of(batch)[s]
            chunk = batch["chunk"][s]
            assert row == chunk * T and batch["video"][s] == video and batch["label"][s] == video % 4
            seen[(video, chunk)] += 1
            continues = previous is not None and previous == (video, chunk - 1)
            assert bool(batch["reset"][s]) == (not continues)  # reset: the stream starts a video (or piece)
            previous = (video, chunk)
    assert seen == Counter({(i, k): 1 for i in range(11) for k in range(ds._chunks[i])})


def test_batches_are_a_pure_function_of_seed_epoch_and_step(ragged_store):
    a, b = dataset(ragged_store, seed=3), dataset(ragged_store, seed=3)
    for key in [(1, 4), (0, 0), (1, 4), (2, len(a) - 1)]:  # any order: nothing carried between reads
        x, y = a[key], b[key]
        assert all(np.array_equal(x[k], y[k]) for k in ("label", "video", "reset", "chunk", "weight"))
        assert np.array_equal(x["feats"]["final.cls"], y["feats"]["final.cls"])
    assert not np.array_equal(a[(0, 2)]["video"], a[(1, 2)]["video"])  # another epoch, another order
    starts = [(rows_of(batch)[s][1], batch["chunk"][s] * T) for batch in read(a, 0)
              for s in np.flatnonzero(batch["weight"])]  # fmt: skip
    assert any(r != c for r, c in starts) and all(c - T < r <= c for r, c in starts)  # jitter: shifted < T


def test_ddp_processes_split_the_streams(ragged_store):
    whole = dataset(ragged_store, streams=4, jitter=False)
    shares = [dataset(ragged_store, streams=2, rank=r, world=2, jitter=False) for r in range(2)]
    assert len(whole) == len(shares[0]) == len(shares[1])  # every process takes as many steps
    for step in range(len(whole)):
        joined = np.concatenate([s[(0, step)]["video"] for s in shares])
        assert np.array_equal(joined, whole[(0, step)]["video"])


def test_evaluation_keeps_each_video_whole_in_one_stream(ragged_store):
    ds = dataset(ragged_store, mode="eval", streams=3, jitter=True)  # no jitter at evaluation
    plan = StreamPlan([5, 1, 1, 1, 2], streams=2, mode="whole")  # stream 0: unit 0; stream 1: units 1-4
    assert plan.steps == 5 and plan.slot(0, 0, 1) == (1, 0, True) and plan.slot(0, 3, 1) == (4, 0, True)
    assert plan.slot(0, 4, 1) == (4, 1, False) and plan.slot(0, 4, 0) == (0, 4, False)
    assert StreamPlan([5, 1], streams=2, mode="whole").slot(0, 1, 1) is None  # stream 1 has ended
    chunks = {}
    for batch in read(ds, epoch=0):
        for s in np.flatnonzero(batch["weight"]):
            video, row = rows_of(batch)[s]
            chunks.setdefault(video, []).append((s, row, bool(batch["reset"][s])))
    for video, got in chunks.items():
        assert len({s for s, _, _ in got}) == 1  # one stream
        assert [r for _, r, _ in got] == [k * T for k in range(ds._chunks[video])]  # every chunk, in order
        assert [r for _, _, r in got] == [True] + [False] * (len(got) - 1)


def test_segments_of_one_source_stream_without_reset_with_labels_per_chunk(tmp_path):
    store = write_store(tmp_path / "segments.zarr", [  # one long source cut into 3 labelled segments
        ("b_mid", 1, "/s/long.mp4", 8.0, 8, 32), ("a_end", 2, "/s/long.mp4", 16.0, 4, 64),
        ("c_start", 0, "/s/long.mp4", 0.0, 8, 96), ("other", 3, "/s/other.mp4", 0.0, 4, 128),
    ])  # fmt: skip
    ds = dataset(store, mode="eval", streams=1, stream_by="source")
    got = [(int(rows_of(b)[0][0]), int(b["label"][0]), bool(b["reset"][0])) for b in read(ds, 0)]
    assert got == [(3, 0, True), (3, 0, False), (1, 1, False), (1, 1, False), (2, 2, False), (4, 3, True)]
    with pytest.raises(ConfigError, match="stream_by='scene' is unknown"):
        dataset(store, stream_by="scene")


# ----------------------------------------------------------------------------------------- loop


class Killed(Exception):
    """Stands for a SIGKILL between two steps."""


def test_a_stream_run_stopped_mid_epoch_resumes_to_the_uninterrupted_run(
    tmp_path, store_factory, monkeypatch
):
    store = store_factory("streams_resume", videos=12, rows=12, views=1)
    options = {
        "head": {"name": "memvit", "options": {"memory": 2, "depth": 1, "dropout": 0.2}},  # RNG state matters
        "data": {"frames": T, "batch_size": 3, "val_fraction": 0.25},
        "optim": {"epochs": 2},
        "run": {"checkpoint_every": 1},
    }
    full = run_train(make_cfg(tmp_path / "full", store, **options))
    batches = StreamLoader.batches

    def dying(self, epoch=0, start=0):
        for b, batch in enumerate(batches(self, epoch, start), start=start):
            if (epoch, b) == (1, 5) and self.dataset.mode == "train":
                raise Killed
            yield batch

    monkeypatch.setattr(StreamLoader, "batches", dying)
    with pytest.raises(Killed):
        run_train(make_cfg(tmp_path / "cut", store, **options))
    monkeypatch.setattr(StreamLoader, "batches", batches)
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 5) and ckpt["state"]["memory"]["valid"].any()
    resumed = run_train(make_cfg(tmp_path / "cut", store, **options))
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["state"]["memory"]["entries"][0], b["state"]["memory"]["entries"][0])
    drop = ("seconds", "clips_per_s", "peak_mem_mb", "eval_seconds", "out")
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in full.items() if k not in drop
    }
    lines = [read_jsonl(tmp_path / run / "metrics.jsonl")[1:] for run in ("full", "cut")]
    full_lines, cut_lines = ([{k: v for k, v in r.items() if k not in drop} for r in run] for run in lines)
    assert cut_lines == full_lines and [r["type"] for r in cut_lines] == ["epoch", "eval", "epoch", "eval"]


def test_the_step_drops_a_memory_saved_by_another_process():
    class Probe(torch.nn.Module):
        def init_memory(self, batch, device):
            return {"valid": torch.zeros(batch, 1, dtype=torch.bool)}

        def forward(self, feats, memory, reset):
            self.seen = memory
            return feats["x"].sum(1), {"valid": torch.ones(len(reset), 1, dtype=torch.bool)}

    step, model = streams.stream_step(torch.device("cpu"), rank=1), Probe()
    batch = {"feats": {"x": torch.randn(2, 4, 3)}, "label": torch.zeros(2, dtype=torch.long),
             "reset": torch.zeros(2, dtype=torch.bool), "weight": torch.tensor([1.0, 0.0])}  # fmt: skip
    rank0 = {"rank": torch.tensor(0), "memory": {"valid": torch.ones(2, 1, dtype=torch.bool)}}
    out, state = step(model, batch, rank0)
    assert not model.seen["valid"].any() and int(state["rank"]) == 1  # rank 0's memory was not used
    assert len(out.labels) == 1  # the ended stream (weight 0) is left out of the metrics
    step(model, batch, state)
    assert model.seen["valid"].all()  # its own memory is
