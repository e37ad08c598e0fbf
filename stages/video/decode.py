"""Video decoding: one small reader interface over decord and PyAV, with sparse seeking.

    source (path | bytes) -> probe (PyAV: readable? video stream?) -> decord reader
                                                                   `-> PyAV reader (fallback)
    reader.get_frames([i, j, ...]) -> uint8 [n, H, W, 3] RGB, in the order asked

decord is the default (fast C++ indexing and batched seeks); PyAV is the fallback for what decord
cannot read (odd widths, some containers, truncated files) and the reference for robustness. Both
readers keep at most the requested frames in memory, so memory does not grow with video length.

Example:
    >>> with open_video("clip.mp4") as reader:                      # doctest: +SKIP
    ...     frames = reader.get_frames([0, 8, 16])                   # [3, H, W, 3] uint8
    ...     seconds = reader.timestamps([0, 8, 16])                  # float64 [3]
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from stages.core.errors import DecodeError
from stages.core.registry import Registry

Source = str | os.PathLike | bytes

DECODERS: Registry[Callable[..., VideoReader]] = Registry("decoder")

_HINT = (
    "the file is probably not a video, has no video stream, or is truncated/corrupt; "
    "check it with `ffprobe` and re-encode it (e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`)"
)


@dataclass(frozen=True)
class VideoInfo:
    """What a reader knows about its video stream before decoding it."""

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float  # seconds, first frame start to last frame end
    backend: str


@runtime_checkable
class VideoReader(Protocol):
    """A random-access reader over one video stream; ``clamped`` turns True once an index was clamped."""

    info: VideoInfo
    clamped: bool

    def get_frames(self, indices: Sequence[int]) -> np.ndarray: ...

    def timestamps(self, indices: Sequence[int]) -> np.ndarray: ...

    def close(self) -> None: ...


def _describe(source: Source, name: str | None = None) -> str:
    if name:
        return repr(name)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes in memory>"
    return repr(os.fspath(source))


def _as_indices(indices: Sequence[int]) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)  # [n]
    if idx.size == 0:
        raise ValueError("get_frames needs at least one frame index, got none")
    if (idx < 0).any():
        raise ValueError(f"frame indices must be >= 0, got {idx[idx < 0][:5].tolist()}")
    return idx


class _ReaderBase:
    """Shared bookkeeping: context manager, clamping to the last decodable frame."""

    info: VideoInfo
    clamped: bool = False

    def _clamp(self, idx: np.ndarray, limit: int) -> np.ndarray:
        if (idx >= limit).any():
            self.clamped = True
            idx = np.minimum(idx, limit - 1)
        return idx

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the decoder's resources; readers that hold any override this."""


# ----------------------------------------------------------------------------------------------- decord


@DECODERS.register("decord")
class DecordReader(_ReaderBase):
    """decord.VideoReader behind the common interface; one probe read of frame 0 at open."""

    def __init__(self, source: Source, *, num_threads: int = 1, probe: bool = True) -> None:
        import decord

        if probe:
            _probe(source)  # decord can hang or crash on non-videos: vet the input with PyAV first
        src = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
        self._vr = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=num_threads)
        n = len(self._vr)
        if n <= 0:
            raise DecodeError("decord reports 0 frames")
        first = self._read(np.array([0]))  # the "first real read": fails early on what decord cannot decode
        spans = self._vr.get_frame_timestamp([0, n - 1])  # [2, 2] (start, end) seconds
        self._t0 = float(spans[0, 0])
        fps = float(self._vr.get_avg_fps())
        if not fps > 0:  # some containers carry no rate: derive it from the timestamps
            fps = (n - 1) / float(spans[1, 0] - spans[0, 0]) if spans[1, 0] > spans[0, 0] else 25.0
        self.info = VideoInfo(
            n, fps, first.shape[2], first.shape[1], float(spans[1, 1] - spans[0, 0]), "decord"
        )

    def _read(self, unique: np.ndarray) -> np.ndarray:
        batch = self._vr.get_batch(unique.tolist())
        out = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)  # any decord bridge
        return np.ascontiguousarray(out)  # [u, H, W, 3]

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._clamp(_as_indices(indices), self.info.num_frames)
        unique, inverse = np.unique(idx, return_inverse=True)  # decode each frame once, in file order
        return self._read(unique)[inverse]  # [n, H, W, 3]

    def timestamps(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.minimum(_as_indices(indices), self.info.num_frames - 1)
        return self._vr.get_frame_timestamp(idx.tolist())[:, 0].astype(np.float64) - self._t0  # [n]

    def close(self) -> None:
        self._vr = None  # decord frees its demuxer and decoder with the object


# ------------------------------------------------------------------------------------------------- PyAV


def _open_container(source: Source):
    import av

    if isinstance(source, bytes):
        return av.open(io.BytesIO(source), mode="r")
    return av.open(os.fspath(source), mode="r")


class _PathProblem(DecodeError):
    """The path itself is wrong (missing, a folder): no re-encoding will help."""


def _probe(source: Source) -> None:
    """Cheap checks that keep bad inputs away from decord (which can hang or crash on them)."""
    if isinstance(source, bytes):
        if not source:
            raise DecodeError("empty input (0 bytes)")
    else:
        path = os.fspath(source)
        if os.path.isdir(path):
            raise _PathProblem("is a directory, not a video file")
        if not os.path.exists(path):
            raise _PathProblem("no such file")
        if os.path.getsize(path) == 0:
            raise DecodeError("empty file (0 bytes)")
    try:
        container = _open_container(source)
    except Exception as exc:  # any FFmpeg/OS failure means "unreadable"
        raise DecodeError(f"FFmpeg cannot open it ({type(exc).__name__}: {exc})") from exc
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise DecodeError(f"no video stream (streams: {', '.join(kinds)})")


@DECODERS.register("pyav")
class PyAVReader(_ReaderBase):
    """PyAV reader: a packet index (pts, keyframes) built by demuxing, then seek + decode on demand.

    Frame ``i`` is the ``i``-th packet in presentation (pts) order. Demuxing reads packets without
    decoding them, so opening costs one pass over the file's bytes and O(frames) small integers.
    """

    def __init__(self, source: Source, *, num_threads: int = 1, probe: bool = True) -> None:
        if probe:
            _probe(source)
        self._container = _open_container(source)
        self._stream = self._container.streams.video[0]
        ctx = self._stream.codec_context
        ctx.thread_count = num_threads
        if num_threads > 1:
            self._stream.thread_type = "AUTO"
        self._pts, self._keys = self._index()
        if self._pts.size == 0:
            self.close()
            raise DecodeError("the video stream holds no packets")
        self._decodable = self._pts.size  # lowered when decoding stops early (truncated file)
        tb = float(self._stream.time_base)
        rate = self._stream.average_rate or self._stream.guessed_rate
        span = float(self._pts[-1] - self._pts[0]) * tb
        fps = float(rate) if rate else (self._pts.size - 1) / span if span > 0 else 25.0  # 25: ffmpeg default
        self._tb = tb
        self.info = VideoInfo(self._pts.size, fps, ctx.width, ctx.height, span + 1.0 / fps, "pyav")
        try:
            self.get_frames([0])  # the first real read: raises DecodeError when no frame decodes
        except Exception:
            self.close()
            raise

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted pts of every video packet [N], and the (sorted) frame indices of keyframes [K]."""
        pts, key = [], []
        try:
            for packet in self._container.demux(self._stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None or packet.size == 0:
                    continue  # the flush packet, or empty placeholder packets (some AVI)
                pts.append(stamp)
                key.append(packet.is_keyframe)
        except Exception:  # a truncated file: index what could be read
            pass
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        pts_arr = np.asarray(pts, dtype=np.int64)[order]  # [N]
        key_arr = np.asarray(key, dtype=bool)[order]  # [N]
        if key_arr.size and not key_arr[0]:
            key_arr[0] = True  # decoding always starts somewhere; the seek code copes with a late start
        return pts_arr, np.flatnonzero(key_arr)

    def _key_before(self, i: int) -> int:
        """The last keyframe at or before frame ``i`` (frame 0 counts as one)."""
        return int(self._keys[max(int(np.searchsorted(self._keys, i, side="right")) - 1, 0)])

    def _nearest(self, stamp: int) -> int:
        """The frame index whose pts is nearest to ``stamp`` (muxers may round timestamps)."""
        i = int(np.searchsorted(self._pts, stamp))
        if i >= self._pts.size or (i > 0 and stamp - self._pts[i - 1] < self._pts[i] - stamp):
            i -= 1
        return i

    def _seek_and_decode(self, first: int):
        """Yield (index, frame) from the keyframe at or before frame ``first`` onwards."""
        for attempt in dict.fromkeys((self._key_before(first), 0)):  # then from the start, once
            self._container.seek(int(self._pts[attempt]), stream=self._stream, backward=True)
            frames = self._decode_from_seek()
            head = next(frames, None)
            if head is not None and (head[0] <= first or attempt == 0):
                yield head
                yield from frames
                return
        # nothing decodes from the start either: the caller sees an empty iterator

    def _decode_from_seek(self):
        try:
            for frame in self._container.decode(self._stream):
                stamp = frame.pts if frame.pts is not None else frame.dts
                if stamp is None:
                    continue
                yield self._nearest(stamp), frame
        except Exception:  # corrupt or truncated data ends the decodable part
            return

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._clamp(_as_indices(indices), self._decodable)
        wanted = np.unique(idx)  # sorted, each decoded once
        got: dict[int, np.ndarray] = {}
        pos = -1  # index of the last frame the live decoder produced; -1 = needs a seek
        frames = iter(())
        for target in wanted.tolist():
            if pos < 0 or target <= pos or self._key_before(target) > pos + 1:
                frames, pos = self._seek_and_decode(target), -1  # jump: cheaper than decoding the gap
            for i, frame in frames:
                pos = i
                if i >= target:
                    got[target] = frame.to_ndarray(format="rgb24")  # any pix_fmt -> uint8 RGB
                    break
            if target not in got:  # decoding ended before target: truncated or corrupt from here on
                self._decodable = self._last_decodable(before=target) + 1  # strictly lower: terminates
                return self.get_frames(idx)  # again, clamped to the new limit (sets self.clamped)
        return np.stack([got[i] for i in idx.tolist()])  # [n, H, W, 3]

    def _last_decodable(self, before: int) -> int:
        """Index of the last frame before ``before`` that decodes, scanning back keyframe by keyframe."""
        for key in self._keys[self._keys < before][::-1].tolist():
            last = -1
            for i, _frame in self._seek_and_decode(key):
                if i >= before:
                    break
                last = max(last, i)
            if last >= 0:
                return last
        raise DecodeError("no frame of the video stream decodes")

    def timestamps(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.minimum(_as_indices(indices), self._pts.size - 1)
        return (self._pts[idx] - self._pts[0]).astype(np.float64) * self._tb  # [n]

    def close(self) -> None:
        if getattr(self, "_container", None) is not None:
            self._container.close()
            self._container = None


# ------------------------------------------------------------------------------------------------- open


class _FallbackReader(_ReaderBase):
    """decord first; the first failing read switches to PyAV for good (``info.backend`` says which)."""

    def __init__(self, primary: VideoReader, source: Source, num_threads: int, name: str) -> None:
        self._reader, self._source, self._threads, self._name = primary, source, num_threads, name
        self.info = primary.info

    def _switch(self, exc: Exception) -> None:
        self._reader.close()
        try:
            self._reader = PyAVReader(self._source, num_threads=self._threads, probe=False)
        except Exception as exc2:
            raise DecodeError(
                f"cannot decode {self._name}: decord failed mid-read ({_short(exc)}); "
                f"pyav: {_short(exc2)}; {_HINT}"
            ) from exc2
        self.info = self._reader.info

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        if self.info.backend == "decord":
            try:
                out = self._reader.get_frames(indices)
                self.clamped = self.clamped or self._reader.clamped
                return out
            except ValueError:
                raise
            except Exception as exc:  # decord raises DECORDError/RuntimeError
                self._switch(exc)
        out = self._reader.get_frames(indices)
        self.clamped = self.clamped or self._reader.clamped
        return out

    def timestamps(self, indices: Sequence[int]) -> np.ndarray:
        return self._reader.timestamps(indices)

    def close(self) -> None:
        self._reader.close()


def _short(exc: BaseException) -> str:
    """One readable line: decord prefixes its errors with a time and a C++ source location."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"[:300]


def open_video(
    source: Source, *, backend: str = "auto", num_threads: int = 1, name: str | None = None
) -> VideoReader:
    """Open a video file (path) or in-memory file (bytes) for random-access decoding.

    Args:
        source: a local path, or the raw bytes of a video file (e.g. a webdataset member).
        backend: ``"auto"`` (decord, falling back to PyAV), or a name in ``DECODERS``.
        num_threads: decoder threads per reader; 1 suits many parallel worker processes.
        name: how error messages refer to the source (defaults to the path, or the byte count).

    Raises:
        DecodeError: no backend can read a frame; the message names the file and each backend's error.
    """
    label = _describe(source, name)
    if backend != "auto":
        builder = DECODERS.get(backend)
        try:
            return builder(source, num_threads=num_threads)
        except Exception as exc:
            raise DecodeError(f"cannot decode {label} with {backend}: {_short(exc)}; {_HINT}") from exc
    try:
        _probe(source)
    except _PathProblem as exc:
        raise DecodeError(
            f"cannot read {label}: {exc}; check the path in the source list (relative paths are taken "
            "from the list's own folder)"
        ) from exc
    except DecodeError as exc:
        raise DecodeError(f"cannot decode {label}: pyav: {exc}; decord: not tried; {_HINT}") from exc
    try:
        primary = DecordReader(source, num_threads=num_threads, probe=False)
        return _FallbackReader(primary, source, num_threads, label)
    except Exception as exc:  # decord raises DECORDError, RuntimeError...
        decord_error = _short(exc)
    try:
        return PyAVReader(source, num_threads=num_threads, probe=False)
    except Exception as exc:
        raise DecodeError(
            f"cannot decode {label}: decord: {decord_error}; pyav: {_short(exc)}; {_HINT}"
        ) from exc
