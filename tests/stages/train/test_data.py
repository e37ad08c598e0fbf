"""Stage-two data: clips from stored rows, views per epoch, jitter, token dropout, determinism, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stages.core.errors import StoreMismatchError
from stages.train.data import (
    ClipDataset,
    EpochLoader,
    EpochSampler,
    clip_rows,
    collate_clips,
    split_ids,
    spread_starts,
)
from store import FeatureStore


@pytest.fixture(scope="module")
def fs(direction_store) -> FeatureStore:
    return FeatureStore(direction_store)


@pytest.fixture(scope="module")
def tokens_fs(token_store) -> FeatureStore:
    return FeatureStore(token_store)


def dataset(fs: FeatureStore, mode: str = "train", **kw) -> ClipDataset:
    kw = {"frames": 8, "stride": 1, "tensors": ["final.cls"], "seed": 0} | kw
    ids = kw.pop("ids", split_ids(fs, 0.0)[0])
    return ClipDataset(fs, ids, mode=mode, **kw)


def choices(ds: ClipDataset, epoch: int) -> list[tuple[int, int, tuple[int, ...]]]:
    keys = [(epoch, k) for k in range(len(ds))]
    return [(i, view, tuple(rows.tolist())) for i, view, rows in map(ds.clip, keys)]


# ----------------------------------------------------------------------------------------- split


def test_split_is_a_stable_function_of_the_id(store_factory):
    fs = FeatureStore(store_factory("with_unlabelled", videos=40, unlabelled=4))
    train, val = split_ids(fs, 0.25)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 40  # the 4 unlabelled are left out
    assert all(fs.video(v).label >= 0 for v in train + val)
    assert 4 <= len(val) <= 18  # about a quarter
    assert split_ids(fs, 0.25) == (train, val)
    grown, _ = split_ids(fs, 0.5)
    assert set(grown) <= set(train)  # a larger fraction only moves videos from train to val
    assert split_ids(fs, 0.0) == (sorted(train + val), [])


# ----------------------------------------------------------------------------------------- clips


def test_train_clips_follow_stride_and_stay_within_the_stored_rows(fs):
    ds = dataset(fs, frames=4, stride=3)  # span 10 of 16 rows
    for i, view, rows in map(ds.clip, range(len(ds))):
        assert np.all(np.diff(rows) == 3) and rows[0] >= 0 and rows[-1] < 16
        assert view in fs.video(ds.ids[i]).views


def test_train_choices_are_deterministic_per_seed_and_epoch(fs):
    a, b = dataset(fs), dataset(fs)
    assert choices(a, 3) == choices(b, 3)
    assert choices(a, 3) != choices(a, 4)  # another epoch: other views and starts
    assert choices(a, 3) != choices(dataset(fs, seed=1), 3)
    starts = {rows[0] for e in range(6) for _, _, rows in choices(a, e)}
    views = {view for e in range(6) for _, view, _ in choices(a, e)}
    assert starts == set(range(9)) and views == {0, 1}  # jitter over all 9 starts, both views


def test_view_policies(fs):
    def views(policy: str, epoch: int) -> list[int]:
        return [view for _, view, _ in choices(dataset(fs, views=policy), epoch)]

    cycle = [views("cycle", e) for e in range(3)]
    assert all(
        a != b for a, b in zip(cycle[0], cycle[1], strict=True)
    )  # every video: another view each epoch
    assert cycle[0] == cycle[2] and set(cycle[0]) == {0, 1}  # 2 views: period 2; phases differ per video
    rand = [views("random", e) for e in range(6)]
    assert any(a == b for a, b in zip(rand[0], rand[1], strict=True)) and set(sum(rand, [])) == {0, 1}
    assert {v for e in range(4) for v in views("first", e)} == {0}


def test_without_jitter_train_clips_are_centred(fs):
    ds = dataset(fs, jitter=False)
    assert {rows[0] for e in range(3) for _, _, rows in choices(ds, e)} == {4}  # (16 - 8) // 2


def test_eval_yields_every_view_and_spread_clips(fs):
    ds = dataset(fs, "eval", eval_clips=3)
    n_videos = len(ds.ids)
    assert len(ds) == n_videos * 2 * 3
    first = [ds.clip(k) for k in range(6)]
    assert [(i, v, int(r[0])) for i, v, r in first] == [
        (0, 0, 0),
        (0, 0, 4),
        (0, 0, 8),
        (0, 1, 0),
        (0, 1, 4),
        (0, 1, 8),
    ]
    assert spread_starts(8, 1) == [4] and spread_starts(0, 3) == [0]  # one clip centred; no room: one start


def test_clip_values_are_the_stored_rows(fs):
    ds = dataset(fs, frames=4, stride=2)
    keys = [(5, 3), (5, 0), (5, 7)]
    batch = ds.__getitems__(keys)
    for b, k in enumerate(keys):
        i, view, rows = ds.clip(k)
        want = fs.read(ds.ids[i], view, rows, ["final.cls"])["final.cls"]
        np.testing.assert_array_equal(batch["feats"]["final.cls"][b].astype(np.float32), want)
        assert batch["label"][b] == fs.video(ds.ids[i]).label and batch["video"][b] == i


def test_collate_gives_batched_tensors(fs):
    ds = dataset(fs)
    batch = collate_clips(ds.__getitems__([0, 1, 2]))
    assert (
        batch["feats"]["final.cls"].shape == (3, 8, 16) and batch["feats"]["final.cls"].dtype == torch.float16
    )
    assert batch["label"].dtype == torch.long and batch["video"].tolist() == [0, 1, 2]
    single = collate_clips([ds[0], ds[1]])  # item by item gives the same
    assert torch.equal(single["feats"]["final.cls"], batch["feats"]["final.cls"][:2])


# ----------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "frames, stride, match",
    [
        (17, 1, r"needs 17 stored rows per view.*at most frames=16 with stride 1"),
        (9, 2, r"needs 17 stored rows.*or frames=8 with stride 2"),
    ],
)
def test_more_frames_than_stored_is_refused(fs, frames, stride, match):
    with pytest.raises(StoreMismatchError, match=match):
        dataset(fs, frames=frames, stride=stride)


def test_pad_repeats_the_last_row_instead(fs):
    ds = dataset(fs, frames=20, stride=1, short_videos="pad")
    _, _, rows = ds.clip(0)
    assert rows.tolist() == list(range(16)) + [15] * 4
    assert clip_rows(5, 4, 2, 0).tolist() == [0, 2, 4, 4]


def test_a_tensor_the_store_lacks_is_refused(fs):
    with pytest.raises(StoreMismatchError, match=r"no tensor 'b11.tokens'.*holds \['final.cls'\]"):
        dataset(fs, tensors=["b11.tokens"])


# ----------------------------------------------------------------------------------------- token dropout


def test_token_dropout_zeroes_the_same_patch_tokens_in_every_layer_never_cls(tokens_fs):
    names = ["embed.tokens", "b0.tokens", "b1.tokens", "b1.pooled", "final.cls"]
    ds = dataset(tokens_fs, tensors=names, token_dropout=0.5)
    feats = ds.__getitems__(list(range(8)))["feats"]
    dropped = {n: np.all(feats[n] == 0, axis=-1) for n in names[:4]}  # [B, T, L]
    assert not dropped["b0.tokens"][:, :, 0].any()  # the CLS token is kept
    assert np.array_equal(dropped["embed.tokens"], dropped["b0.tokens"])
    assert np.array_equal(dropped["b0.tokens"], dropped["b1.tokens"])
    assert 0.3 < dropped["b0.tokens"][:, :, 1:].mean() < 0.7 and 0.3 < dropped["b1.pooled"].mean() < 0.7
    again = dataset(tokens_fs, tensors=names, token_dropout=0.5).__getitems__(list(range(8)))["feats"]
    assert all(np.array_equal(feats[n], again[n]) for n in names)  # deterministic
    plain = dataset(tokens_fs, "eval", tensors=names, token_dropout=0.5).__getitems__(list(range(8)))["feats"]
    assert not any(np.all(plain[n] == 0, axis=-1).any() for n in names[:4])  # never at eval


# ----------------------------------------------------------------------------------------- loading


def test_sampler_shares_are_disjoint_and_cover_the_data():
    eval_shares = [[i for _, i in EpochSampler(11, shuffle=False, rank=r, world=3)] for r in range(3)]
    assert sorted(sum(eval_shares, [])) == list(range(11))  # every eval item exactly once
    train = [EpochSampler(11, shuffle=True, seed=0, rank=r, world=3) for r in range(3)]
    shares = [list(s) for s in train]
    assert all(
        len(s) == 3 == len(t) for s, t in zip(shares, train, strict=True)
    )  # equal: DDP ranks step together
    assert len(set(sum(shares, []))) == 9
    train[0].set_epoch(1)
    assert list(train[0]) != shares[0] and {e for e, _ in train[0]} == {1}
    train[0].set_epoch(1, start=2)  # resume inside an epoch: the same items from the third on
    assert list(train[0]) == _epoch(train[0], 1)[2:] and len(train[0]) == 1


def test_loader_workers_give_the_same_batches(fs):
    batches = []
    for workers in (0, 2):
        ds = dataset(fs)
        sampler = EpochSampler(len(ds), shuffle=True, seed=0)
        sampler.set_epoch(2)
        loader = DataLoader(ds, batch_size=5, sampler=sampler, num_workers=workers, collate_fn=collate_clips)
        batches.append(list(loader))
    assert len(batches[0]) == len(batches[1]) == 10
    for a, b in zip(*batches, strict=True):
        assert torch.equal(a["feats"]["final.cls"], b["feats"]["final.cls"]) and torch.equal(
            a["video"], b["video"]
        )


def _epoch(sampler: EpochSampler, epoch: int) -> list[tuple[int, int]]:
    sampler = EpochSampler(sampler.size, shuffle=sampler.shuffle, seed=sampler.seed, rank=sampler.rank,
                           world=sampler.world)  # fmt: skip
    sampler.set_epoch(epoch)
    return list(sampler)


def test_an_epoch_loader_restarts_at_any_batch_with_the_same_batches(fs):
    loader = EpochLoader(dataset(fs), batch_size=3, shuffle=True, seed=4)
    whole = list(loader.batches(epoch=2))
    assert len(loader) == len(whole) == -(-len(fs.videos) // 3) > 5
    tail = list(loader.batches(epoch=2, start=4))
    assert len(tail) == len(whole) - 4
    for a, b in zip(whole[4:], tail, strict=True):
        assert torch.equal(a["feats"]["final.cls"], b["feats"]["final.cls"]) and torch.equal(
            a["video"], b["video"]
        )
    other = list(loader.batches(epoch=3))
    assert not torch.equal(other[0]["video"], whole[0]["video"])


class WholeArray(torch.utils.data.Dataset):
    """Each item reads a whole multi-shard zarr array (the codec pipeline decodes shards in parallel)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key):
        import zarr

        return float(zarr.open_array(self.path, mode="r")[:].sum())


def test_loader_processes_read_after_this_process_decoded_the_store(tmp_path):
    """A forked worker hangs on its first parallel zarrs decode once its parent decoded in parallel (the
    Rust thread pool does not survive a fork); the loader's workers start from a fork server instead."""
    import subprocess
    import sys

    script = f"""
import numpy as np, zarr
from store import codecs
from stages.train.data import EpochLoader
from tests.stages.train.test_data import WholeArray
a = zarr.create_array({str(tmp_path / "a")!r}, shape=(64, 100), chunks=(8, 100), shards=(32, 100),
                      dtype="float16", compressors=codecs.compressors("lz4", 2))
a[:] = np.ones((64, 100))
assert a[:].sum() == 6400  # this process decodes in parallel first
batches = list(EpochLoader(WholeArray({str(tmp_path / "a")!r}), batch_size=2, shuffle=False, workers=2,
                           collate=list).batches(0))
print(sum(len(b) for b in batches))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "4", out.stderr[-2000:]
