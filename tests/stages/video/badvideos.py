"""Writers for tiny test videos: lossless clips with known content and a corpus of bad/odd inputs.

Reused by the decoding tests and later by the extraction tests::

    corpus = write_bad_corpus(tmp_path)
    path, expectation = corpus["truncated"]   # expectation is "decodes" or "fails"

Everything is written with PyAV's bundled FFmpeg; nothing needs the network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

DECODES = "decodes"
FAILS = "fails"
CORPUS_NAMES = (  # every entry write_bad_corpus may write (ones whose encoder is missing are left out)
    "empty",
    "random_bytes",
    "text_renamed",
    "directory",
    "audio_only",
    "audio_only_mp3",
    "truncated",
    "truncated_tail",
    "one_frame",
    "tiny_16x16",
    "ten_bit_x264",
    "ten_bit_hevc",
    "ten_bit_ffv1",
    "gray16_ffv1",
    "yuv444",
    "vfr",
    "avi_mpeg4",
    "avi_mjpeg",
    "webm_vp9",
    "webm_vp8",
    "mkv_h264",
    "odd_width_48",
    "unicode_name",
)


def known_frames(n: int, height: int = 32, width: int = 48) -> np.ndarray:
    """uint8 [n, H, W, 3] frames whose content identifies the frame index.

    Frame i: red = (8 * i) % 256 everywhere, green = a horizontal ramp, blue = (255 - 8 * i) % 256.
    """
    i = np.arange(n, dtype=np.int64)[:, None, None]  # [n, 1, 1]
    red = np.broadcast_to((8 * i) % 256, (n, height, width))
    green = np.broadcast_to((np.arange(width) * 255 // max(width - 1, 1))[None, None, :], (n, height, width))
    blue = np.broadcast_to((255 - 8 * i) % 256, (n, height, width))
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)  # [n, H, W, 3]


def frame_index_of(frames: np.ndarray) -> np.ndarray:
    """Recover the source index i (mod 32) of frames made by :func:`known_frames` from their red channel."""
    red = frames[..., 0].reshape(len(frames), -1).mean(axis=1)  # [n]
    return np.rint(red / 8).astype(np.int64) % 32


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    codec: str = "libx264rgb",
    pix_fmt: str = "rgb24",
    fps: int = 25,
    options: dict[str, str] | None = None,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    fmt: str | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode uint8 RGB ``frames`` [n, H, W, 3] into ``path``.

    Args:
        codec, pix_fmt: encoder and its pixel format (default: lossless RGB H.264).
        fps: nominal frame rate.
        options: encoder options; default ``{"crf": "0"}`` for x264-family encoders (lossless).
        pts: explicit presentation timestamps in ``time_base`` units (for VFR clips).
        time_base: the stream time base used with ``pts`` (default 1/1000).
        fmt: container format when the suffix does not say it.
        container_options: muxer options (e.g. ``{"movflags": "+faststart"}``).
    """
    path = Path(path)
    if options is None:
        options = {"crf": "0"} if codec.startswith("libx26") else {}
    with av.open(str(path), mode="w", format=fmt, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if pts is not None:
            stream.time_base = time_base or Fraction(1, 1000)
            stream.codec_context.time_base = stream.time_base
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = stream.time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio(path: str | os.PathLike, seconds: float = 0.5, codec: str = "aac") -> Path:
    """An audio-only file: a 440 Hz sine encoded with ``codec``."""
    path = Path(path)
    rate = 44100
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        t = np.arange(int(seconds * rate)) / rate
        wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]  # [1, S]
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _try(corpus: dict, name: str, expectation: str, make) -> None:
    """Run ``make() -> path``; skip entries whose encoder this FFmpeg build lacks."""
    try:
        corpus[name] = (str(make()), expectation)
    except (av.error.FFmpegError, ValueError, KeyError) as exc:  # encoder missing in this build
        print(f"badvideos: skipped {name}: {exc}")


def write_bad_corpus(folder: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Write the bad/odd-input corpus into ``folder``; returns ``{name: (path, expectation)}``.

    ``expectation`` is ``"decodes"`` (at least one frame must come out) or ``"fails"`` (a clear
    :class:`~stages.core.errors.DecodeError`). Entries whose encoder is missing are left out.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus: dict[str, tuple[str, str]] = {}
    rng = np.random.default_rng(0)
    clip = known_frames(12, 48, 64)  # 64 wide: decord mis-sizes some narrow widths (16, 48), see odd_width

    (folder / "empty.mp4").write_bytes(b"")
    corpus["empty"] = (str(folder / "empty.mp4"), FAILS)
    (folder / "random.mp4").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    corpus["random_bytes"] = (str(folder / "random.mp4"), FAILS)
    (folder / "text.mp4").write_text("this is not a video\n" * 50)
    corpus["text_renamed"] = (str(folder / "text.mp4"), FAILS)
    (folder / "dir.mp4").mkdir(exist_ok=True)
    corpus["directory"] = (str(folder / "dir.mp4"), FAILS)
    _try(corpus, "audio_only", FAILS, lambda: write_audio(folder / "audio.m4a"))
    _try(corpus, "audio_only_mp3", FAILS, lambda: write_audio(folder / "audio.mp3", codec="libmp3lame"))

    # A real H.264 mp4 cut in half: the moov atom sits at the end, so nothing can be indexed.
    # A fragment-friendly cut (header kept) is covered by "truncated_tail" below.
    whole = write_video(
        folder / "whole.mp4",
        known_frames(40, 48, 64),
        codec="libx264",
        pix_fmt="yuv420p",
        options={"crf": "18"},
    )
    data = whole.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    corpus["truncated"] = (str(folder / "truncated.mp4"), FAILS)
    whole.unlink()

    def truncated_tail() -> Path:  # moov first (faststart): the header survives, the tail of mdat is lost
        src = write_video(
            folder / "whole_fs.mp4",
            known_frames(40, 48, 64),
            codec="libx264",
            pix_fmt="yuv420p",
            options={"crf": "18"},
            container_options={"movflags": "+faststart"},
        )
        payload = src.read_bytes()
        src.unlink()
        out = folder / "truncated_tail.mp4"
        out.write_bytes(payload[: int(len(payload) * 0.6)])
        return out

    _try(corpus, "truncated_tail", DECODES, truncated_tail)
    _try(corpus, "one_frame", DECODES, lambda: write_video(folder / "one.mp4", clip[:1]))
    _try(corpus, "tiny_16x16", DECODES, lambda: write_video(folder / "tiny.mp4", known_frames(6, 16, 16)))
    _try(
        corpus,
        "ten_bit_x264",
        DECODES,
        lambda: write_video(folder / "tenbit264.mp4", clip, codec="libx264", pix_fmt="yuv420p10le"),
    )
    # x265 corrupts the heap on frames smaller than its 64-pixel CTU: keep HEVC at 64x64.
    _try(
        corpus,
        "ten_bit_hevc",
        DECODES,
        lambda: write_video(
            folder / "tenbit265.mp4",
            known_frames(12, 64, 64),
            codec="libx265",
            pix_fmt="yuv420p10le",
            options={"crf": "10", "x265-params": "log-level=error"},
        ),
    )
    _try(
        corpus,
        "ten_bit_ffv1",
        DECODES,
        lambda: write_video(folder / "tenbit.mkv", clip, codec="ffv1", pix_fmt="yuv420p10le"),
    )
    _try(
        corpus,
        "gray16_ffv1",
        DECODES,
        lambda: write_video(folder / "gray16.mkv", clip, codec="ffv1", pix_fmt="gray16le"),
    )
    _try(
        corpus,
        "yuv444",
        DECODES,
        lambda: write_video(folder / "yuv444.mp4", clip, codec="libx264", pix_fmt="yuv444p"),
    )
    _try(
        corpus,
        "vfr",
        DECODES,
        lambda: write_video(
            folder / "vfr.mkv", clip, pts=[0, 40, 60, 150, 160, 170, 300, 340, 380, 500, 520, 600]
        ),
    )
    _try(
        corpus,
        "avi_mpeg4",
        DECODES,
        lambda: write_video(folder / "clip.avi", clip, codec="mpeg4", pix_fmt="yuv420p"),
    )
    _try(
        corpus,
        "avi_mjpeg",
        DECODES,
        lambda: write_video(folder / "mjpeg.avi", clip, codec="mjpeg", pix_fmt="yuvj420p"),
    )
    _try(
        corpus,
        "webm_vp9",
        DECODES,
        lambda: write_video(folder / "clip.webm", clip, codec="libvpx-vp9", pix_fmt="yuv420p"),
    )
    _try(
        corpus,
        "webm_vp8",
        DECODES,
        lambda: write_video(folder / "vp8.webm", clip, codec="libvpx", pix_fmt="yuv420p"),
    )
    _try(
        corpus,
        "mkv_h264",
        DECODES,
        lambda: write_video(folder / "clip.mkv", clip, codec="libx264", pix_fmt="yuv420p"),
    )
    _try(corpus, "odd_width_48", DECODES, lambda: write_video(folder / "odd_width.mp4", known_frames(12)))
    _try(corpus, "unicode_name", DECODES, lambda: write_video(folder / "vidéo ünïcode 1.mp4", clip))
    return corpus
