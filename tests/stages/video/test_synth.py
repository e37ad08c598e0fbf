"""Tests for the synthetic video generator (stages/video/synth.py)."""

from __future__ import annotations

from collections import Counter

import av
import decord
import numpy as np
import pytest

from pipeline.commands import synth as synth_cli
from stages.core.errors import ConfigError
from stages.video import synth


def decode_pyav(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # [T, H, W, 3]


def decode_decord(path) -> np.ndarray:
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()  # [T, H, W, 3]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same small direction set generated twice with one seed, plus once with another seed."""
    dirs = [tmp_path_factory.mktemp(n) for n in ("a", "b", "c")]
    kw = dict(task="direction", videos=6, frames=12, size=64)  # 48 px: decord fails (see synth)
    rows = [synth.generate(dirs[0], seed=3, **kw), synth.generate(dirs[1], seed=3, **kw)]
    rows.append(synth.generate(dirs[2], seed=4, **kw))
    return dirs, rows


def test_same_seed_same_files_and_frames(two_runs):
    (a, b, _), (rows_a, rows_b, _) = two_runs
    assert rows_a == rows_b
    for name in ("labels.csv", "classes.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for row in rows_a:
        assert (a / row["path"]).read_bytes() == (b / row["path"]).read_bytes()  # deterministic encoder
        np.testing.assert_array_equal(decode_pyav(a / row["path"]), decode_pyav(b / row["path"]))


def test_decoders_return_exactly_the_rendered_pixels(two_runs):
    (a, _, _), (rows, _, _) = two_runs
    for i, row in enumerate(rows[:3]):
        video, meta = synth.render("direction", row["label_index"], (3, i), size=64, frames=12)
        assert meta["label"] == row["label"]
        np.testing.assert_array_equal(decode_pyav(a / row["path"]), video)
        np.testing.assert_array_equal(decode_decord(a / row["path"]), video)
    assert decord.VideoReader(str(a / rows[0]["path"])).get_avg_fps() == pytest.approx(8.0)


def test_other_seed_differs(two_runs):
    (a, _, c), (rows_a, _, rows_c) = two_runs
    assert [r["trajectory"] for r in rows_a] != [r["trajectory"] for r in rows_c]
    assert not np.array_equal(decode_pyav(a / rows_a[0]["path"]), decode_pyav(c / rows_c[0]["path"]))


def test_files_written_and_labels_match_rows(two_runs):
    (a, _, _), (rows, _, _) = two_runs
    lines = (a / "labels.csv").read_text().splitlines()
    assert lines[0] == "path,label"
    assert lines[1:] == [f"{r['path']},{r['label']}" for r in rows]
    assert (a / "classes.txt").read_text().splitlines() == ["left", "right", "up", "down"]
    assert sorted(p.name for p in (a / "videos").iterdir()) == [f"{i:06d}.mp4" for i in range(6)]


def test_generate_balances_labels(tmp_path):
    rows = synth.generate(tmp_path, task="appearance", videos=9, seed=0, size=32, frames=4, classes=3)
    counts = Counter(r["label"] for r in rows)
    assert counts == {"digit0": 3, "digit1": 3, "digit2": 3}
    assert [r["label"] for r in rows] != sorted(r["label"] for r in rows)  # shuffled, not blocks
    assert all(r["digit"] == r["label_index"] for r in rows)  # appearance: the label is the digit


@pytest.mark.parametrize("forward,backward", [(1, 0), (3, 2)])  # right->left, down->up
def test_direction_reversed_video_is_the_opposite_label(forward, backward):
    fwd, meta_f = synth.render("direction", forward, 7, size=48, frames=10)
    bwd, meta_b = synth.render("direction", backward, 7, size=48, frames=10)
    np.testing.assert_array_equal(fwd[::-1], bwd)  # exactly the same video, played backwards
    assert meta_b["trajectory"] == meta_f["trajectory"][::-1]
    axis = 0 if forward == 1 else 1  # x for right/left, y for down/up
    steps = np.diff(np.asarray(meta_f["trajectory"])[:, axis])
    assert (steps >= 0).all() and steps.sum() > 0
    assert not np.diff(np.asarray(meta_f["trajectory"])[:, 1 - axis]).any()  # the other axis is fixed


def test_direction_visible_in_pixels():
    video, meta = synth.render("direction", 1, 11, size=64, frames=8)  # right
    bright = video.astype(float).mean(-1) > 150  # [T, H, W] sprite pixels
    xs = [np.nonzero(b)[1].mean() for b in bright]
    assert xs[-1] - xs[0] > 8  # the sprite moved right by several pixels
    starts = {tuple(synth.render("direction", 1, s, size=64, frames=8)[1]["trajectory"][0]) for s in range(6)}
    assert len(starts) == 6  # random start positions: one frame does not reveal the direction


def test_longrange_cue_only_in_first_chunk():
    frames = 24
    red, meta_r = synth.render("longrange", 0, 5, size=32, frames=frames)
    green, meta_g = synth.render("longrange", 1, 5, size=32, frames=frames)
    n = frames // 8
    assert (meta_r["cue_start"], meta_r["cue_end"]) == (0, n) and meta_g["cue_colour"] == "green"
    np.testing.assert_array_equal(red[n:], green[n:])  # after the cue, nothing depends on the label
    assert all(not np.array_equal(r, g) for r, g in zip(red[:n], green[:n], strict=True))
    np.testing.assert_array_equal(red[:n, 0, 0], np.tile(synth.CUE_COLOURS["red"], (n, 1)))
    assert not (red[n:, 0, 0] == synth.CUE_COLOURS["red"]).all(-1).any()  # no border later


def test_longrange_custom_cue_and_default_length(tmp_path):
    rows = synth.generate(tmp_path, task="longrange", videos=2, seed=0, size=32, cue_frames=3)
    assert rows[0]["frames"] == 64 and rows[0]["cue_end"] == 3
    assert len(decode_pyav(tmp_path / rows[0]["path"])) == 64


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(task="colour"), "task 'colour' is unknown"),
        (dict(task="appearance", classes=11), r"classes=11 .* expected 2\.\.10"),
        (dict(task="direction", classes=5), r"expected 2\.\.4"),
        (dict(task="longrange", frames=8, cue_frames=8), "expected 1 <= cue_frames < frames"),
        (dict(task="appearance", videos=0), "videos=0"),
        (dict(task="appearance", fps=0.0), "fps > 0"),
        (dict(task="appearance", size=8), "size >= 16"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = dict(videos=2, seed=0, frames=4) | kwargs
    with pytest.raises(ConfigError, match=match):
        synth.generate(tmp_path, **args)


def test_cli_writes_files_and_summary(tmp_path, capsys):
    out = tmp_path / "set"
    argv = [str(out), "--task", "appearance", "--videos", "4", "--seed", "1", "--size", "32", "--frames", "4"]
    assert synth_cli.main(argv) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith("wrote 4 appearance videos (4 classes, 4 frames of 32x32 at 8 fps)")
    assert len((out / "labels.csv").read_text().splitlines()) == 5
    assert (out / "classes.txt").read_text().split() == ["digit0", "digit1", "digit2", "digit3"]
    assert decode_decord(out / "videos" / "000003.mp4").shape == (4, 32, 32, 3)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        synth_cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "--task {appearance,direction,longrange}" in capsys.readouterr().out
