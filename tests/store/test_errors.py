"""Errors: every bad input gives the documented error with a useful message, and loses nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import zarr

from stages.core.errors import (
    InvalidIdError,
    NotAStoreError,
    StoreError,
    StoreMismatchError,
    StoreVersionError,
)
from store import FeatureStore, PartWriter, StoreSpec, TensorSpec, VideoEntry, create_store, inspect, verify
from store.writer import validate_id
from tests.store.conftest import file_state
from tests.store.synthetic import TENSORS, frozen_weights, make_spec, make_video, video_id


def assert_nothing_lost(store: Path, count: int = 6) -> None:
    """The committed videos are all there and readable (tests that can, also compare every file)."""
    fs = FeatureStore(store)
    assert [v.id for v in fs.videos] == [video_id(i) for i in range(count)]
    _, views = make_video(0, 0, max_rows=20)  # as the `pristine` fixture wrote it
    got = fs.read(video_id(0), views[0].view, tensors=["final.cls"], dequantise=False)["final.cls"]
    np.testing.assert_array_equal(got, np.asarray(views[0].tensors["final.cls"]).astype(np.float16))


# -- paths that are not stores -------------------------------------------------------------------
def _missing(p: Path) -> None:
    pass


def _empty(p: Path) -> None:
    p.mkdir()


def _random_folder(p: Path) -> None:
    (p / "sub").mkdir(parents=True)
    (p / "notes.txt").write_text("my thesis")
    (p / "sub" / "data.bin").write_bytes(b"\0" * 100)


def _plain_group(p: Path) -> None:
    zarr.create_group(str(p), attributes={"owner": "someone else"}).create_array("x", data=np.arange(3))


def _plain_array(p: Path) -> None:
    zarr.create_array(str(p), shape=(3,), dtype="int8")


def _broken_metadata(p: Path) -> None:
    p.mkdir()
    (p / "zarr.json").write_text("{")


NOT_STORES = [_missing, _empty, _random_folder, _plain_group, _plain_array, _broken_metadata]


@pytest.mark.parametrize("make", NOT_STORES, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize(
    "open_",
    [FeatureStore, lambda p: PartWriter(p, "p0000"), verify, inspect],
    ids=["reader", "writer", "verify", "inspect"],
)
def test_opening_what_is_not_a_store(tmp_path, make, open_):
    path = tmp_path / "thing"
    make(path)
    before = file_state(path) if path.exists() else None
    with pytest.raises(NotAStoreError, match=r"not a twostage store.*(Point to|store written)") as info:
        open_(path)
    assert str(path) in str(info.value) and isinstance(info.value, FileNotFoundError)
    assert (file_state(path) if path.exists() else None) == before  # nothing written into it


@pytest.mark.parametrize(
    "make",
    [_random_folder, _plain_group, _plain_array, _broken_metadata],
    ids=lambda f: f.__name__.strip("_"),
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_create_store_never_deletes_a_foreign_folder(tmp_path, make, overwrite):
    path = tmp_path / "thing"
    make(path)
    before = file_state(path)
    with pytest.raises(NotAStoreError, match="not a twostage store"):
        create_store(path, make_spec(), overwrite=overwrite)
    assert file_state(path) == before


# -- version and spec ------------------------------------------------------------------------------
def _set_attr(store: Path, **changes: object) -> None:
    group = zarr.open_group(str(store), mode="r+")
    attrs = dict(group.attrs["twostage"]) | changes
    group.attrs["twostage"] = attrs


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"version": 99}, r"version 99.*Upgrade twostage"),
        ({"version": "1"}, r"version '1'.*Upgrade twostage"),
        (
            {"format": "someone-elses-features"},
            r"format 'someone-elses-features', expected 'twostage-features'",
        ),
    ],
)
@pytest.mark.parametrize(
    "open_",
    [
        FeatureStore,
        lambda p: PartWriter(p, "p0000"),
        lambda p: create_store(p, make_spec()),
        lambda p: create_store(p, make_spec(name="other"), overwrite=True),
    ],
    ids=["reader", "writer", "create", "create-overwrite"],
)
def test_newer_or_foreign_format_is_refused(store_copy, changes, match, open_):
    _set_attr(store_copy, **changes)
    before = file_state(store_copy)
    with pytest.raises(StoreVersionError, match=match):
        open_(store_copy)
    assert file_state(store_copy) == before  # nothing deleted, nothing written


def test_create_store_with_another_spec(store_copy):
    other = make_spec(name="other-vit", tensors=(*TENSORS[:4], dataclasses.replace(TENSORS[4], shape=(24,))))
    with pytest.raises(StoreMismatchError, match="store.overwrite") as info:
        create_store(store_copy, other)
    message = str(info.value)
    assert "backbone.name: 'tiny-vit' -> 'other-vit'" in message
    assert "tensors[4].shape[0]: 12 -> 24" in message and "3 differences" in message  # + bytes_per_frame
    assert "6 committed videos" in message and str(store_copy) in message
    assert_nothing_lost(store_copy)

    create_store(store_copy, make_spec())  # the same spec again: a no-op
    create_store(store_copy, make_spec(shard_mb=1.0, compression="lz4"))  # storage is not identity
    assert_nothing_lost(store_copy)

    create_store(store_copy, other, overwrite=True)  # starts anew
    fs = FeatureStore(store_copy)
    assert len(fs) == 0 and fs.backbone["name"] == "other-vit" and fs.tensors["final.cls"].shape == (24,)
    assert not (store_copy / "parts/p0000").exists()


# -- writer input ----------------------------------------------------------------------------------
BAD_IDS = ["", "a/b", "/abs", "..", "a..b", "..\\x", "c:\\x", "tab\there", "nul\0", "x" * 201]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_invalid_ids_are_refused_and_nothing_is_written(store_copy, bad):
    with pytest.raises(InvalidIdError, match="is not allowed"):
        validate_id(bad)
    entry, views = make_video(0, 0)
    before = file_state(store_copy)
    with PartWriter(store_copy, "p0000") as w:
        after_open = file_state(store_copy)
        with pytest.raises(InvalidIdError, match=r"not allowed.*explicit safe `id`"):
            w.add(dataclasses.replace(entry, id=bad), views)
        w.flush()
        assert file_state(store_copy) == after_open
    assert file_state(store_copy) == before
    assert_nothing_lost(store_copy)


def _wrong_shape(views):
    views[-1].tensors["b2.tokens"] = views[-1].tensors["b2.tokens"][:, :, :8]


def _wrong_shape_prequantised(views):
    q = np.zeros((len(views[0].time_s), 5, 2, 4), np.int8)
    views[0].tensors["b3.q"] = (q, np.ones(q.shape[:-1], np.float16))


def _missing_tensor(views):
    del views[-1].tensors["final.cls"]


def _wrong_row_count(views):
    views[-1].tensors["b2.pooled"] = views[-1].tensors["b2.pooled"][:-1]


def _wrong_meta_length(views):
    views[-1].frame_index = views[-1].frame_index[:-1]


def _repeated_view(views):
    views.append(views[0])


def _no_views(views):
    views.clear()


@pytest.mark.parametrize(
    ("spoil", "error", "match"),
    [
        (
            _wrong_shape,
            StoreMismatchError,
            r"b2.tokens has per-frame shape \(5, 8\), the store expects \(5, 16\)",
        ),
        (_wrong_shape_prequantised, StoreMismatchError, r"b3.q has per-frame shape \(5, 2, 4\)"),
        (_missing_tensor, StoreMismatchError, r"lacks tensors \['final.cls'\]"),
        (_wrong_row_count, StoreMismatchError, r"b2.pooled has \d+ rows, expected \d+"),
        (_wrong_meta_length, StoreMismatchError, r"frame_index has \d+ rows"),
        (_repeated_view, StoreError, "repeats a view number"),
        (_no_views, StoreError, "no views"),
    ],
    ids=lambda x: getattr(x, "__name__", "").strip("_") or None,
)
def test_bad_rows_are_refused_and_nothing_is_written(store_copy, spoil, error, match):
    entry, views = make_video(0, 6, max_rows=10)
    while len(views) < 2:  # the damage goes into the last view: the first must not be written either
        entry, views = make_video(0, int(entry.id[-3:]) + 100, max_rows=10)
    spoil(views)
    with PartWriter(store_copy, "p0000") as w:
        before = file_state(store_copy)
        with pytest.raises(error, match=match):
            w.add(dataclasses.replace(entry, id="new"), views)
        w.flush()
        assert file_state(store_copy) == before
        w.add(*make_video(0, 6))  # the writer is still usable
    assert_nothing_lost(store_copy, 7)
    spans = sorted(s for v in FeatureStore(store_copy).videos for s in v.views.values())
    gaps = [b[0] - (a[0] + a[1]) for a, b in zip(spans, spans[1:], strict=False)]
    assert gaps == [0] * len(gaps)  # no garbage rows left between videos


def test_duplicate_id_is_refused(store_copy):
    with PartWriter(store_copy, "p0000", commit_interval_s=3600.0) as w:
        with pytest.raises(StoreError, match=rf"'{video_id(2)}' is already in part p0000"):
            w.add(*make_video(0, 2))
        w.add(*make_video(0, 6))
        with pytest.raises(StoreError, match="already"):  # still pending (not flushed): refused too
            w.add(*make_video(0, 6))
    assert_nothing_lost(store_copy, 7)


# -- reader requests -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda fs: fs.read(video_id(0), tensors=["b9.tokens"]),
            StoreMismatchError,
            r"no tensor 'b9.tokens'; it holds \['b2.tokens'",
        ),
        (lambda fs: fs.read(video_id(0), view=7), StoreMismatchError, r"has views \[.*\], not 7"),
        (lambda fs: fs.read("nope"), KeyError, r"no committed video 'nope'"),
        (lambda fs: fs.spec.tensor("b2.cls"), StoreMismatchError, "Extract again"),
    ],
)
def test_reader_requests_that_do_not_fit(pristine, call, error, match):
    with pytest.raises(error, match=match):
        call(FeatureStore(pristine))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TensorSpec("b1.attn", "b1", "attn", (4,)), "kind 'attn'"),
        (lambda: TensorSpec("b1.cls", "b1", "cls", (4,), dtype="bfloat16"), "dtype 'bfloat16'"),
        (lambda: TensorSpec("b1.cls", "b2", "cls", (4,)), "must be 'b2.cls'"),
        (lambda: make_spec(tensors=(TENSORS[0], TENSORS[0])), "duplicate tensor names"),
        (lambda: make_spec(tensors=()), "at least one tensor"),
    ],
)
def test_invalid_specs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_spec_round_trips_through_the_attributes(pristine):
    spec = make_spec(chunk_crc=True)  # as the pristine fixture writes it
    assert StoreSpec.from_json(FeatureStore(pristine).attrs) == spec
    assert FeatureStore(pristine).attrs["fingerprint"] == spec.fingerprint
    assert FeatureStore(pristine).attrs["bytes_per_frame"] == sum(t.bytes_per_frame for t in TENSORS)
    assert VideoEntry("x", 0, "s", 1.0, 1).meta == {}
    assert frozen_weights().keys() == set(FeatureStore(pristine).spec.frozen)
