"""``twostage export STORE OUT --tensor NAME [--format npy|npz] [--view V]``: one array per video.

    store rows of (video, view) --dequantise (int8) / cast--> OUT/<id>.npy   [T, *shape]  (T = stored rows)
                                                          or OUT/<id>.npz   features [T, *shape], time_s [T]
    OUT/manifest.csv   id, label, label_index, split, file, frames, fps, feature_fps, time_start, time_end
    OUT/manifest.json  the same (with each video's store meta), and store, tensor, view, shape, dtype, classes

``[T, d]`` per video is what temporal-localisation tools (ActionFormer, TriDet, ...) read; a ``cls`` tensor
exports as ``[T, d]``, ``pooled`` and ``tokens`` as their full per-frame shape ``[T, L, d]``. ``.npy`` files
are written chunk by chunk (memory bounded by one chunk, whatever the video length); each file appears
under its final name only when complete, and the manifest is written last.

Example:
    twostage export runs/epic_dense.zarr feats/ --tensor final.cls --split val
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path
from typing import Any

MANIFEST_COLUMNS = (
    "id",
    "label",
    "label_index",
    "split",
    "file",
    "frames",
    "fps",
    "feature_fps",
    "time_start",
    "time_end",
)
CHUNK_ROWS = 1024  # rows read per store call when streaming a .npy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twostage export",
        description="Write one array per video ([T, d], or [T, L, d] for tokens/pooled tensors) of one "
        "stored tensor and view, with a manifest (manifest.csv, manifest.json): the form "
        "temporal-localisation tools read.",
    )
    parser.add_argument("store", help="feature store (path or fsspec URL)")
    parser.add_argument("out", help="folder to write <id>.npy / <id>.npz and the manifest into")
    parser.add_argument("--tensor", required=True, help="stored tensor, e.g. final.cls (`twostage inspect`)")
    parser.add_argument(
        "--format",
        choices=("npy", "npz"),
        default="npy",
        help="npy (default): features only; npz: features and time_s",
    )
    parser.add_argument("--view", type=int, default=0, help="stored view to export (default 0)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="array dtype (default float32; int8 tensors are dequantised)",
    )
    parser.add_argument("--split", choices=("train", "val", "test"), help="only the videos of this split")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    parser.add_argument("--allow-incomplete", action="store_true", help="export a store still being written")
    return parser


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    manifest = export(
        a.store,
        a.out,
        tensor=a.tensor,
        fmt=a.format,
        view=a.view,
        dtype=a.dtype,
        split=a.split,
        overwrite=a.overwrite,
        allow_incomplete=a.allow_incomplete,
    )
    shape = "x".join(str(s) for s in manifest["shape"])
    print(
        f"exported {len(manifest['videos'])} videos of {a.tensor} (view {a.view}, [T, {shape}] {a.dtype}) "
        f"to {a.out}; manifest {Path(a.out) / 'manifest.csv'}"
    )
    return 0


def export(
    store_path: str,
    out: str | os.PathLike,
    *,
    tensor: str,
    fmt: str = "npy",
    view: int = 0,
    dtype: str = "float32",
    split: str | None = None,
    overwrite: bool = False,
    allow_incomplete: bool = False,
) -> dict[str, Any]:
    """Write ``tensor`` of ``view`` of every (``split``) video of a store, one array per video, under
    ``out``; returns the manifest (also written as ``manifest.json`` / ``manifest.csv``).

    Raises:
        StoreError: an incomplete store (unless ``allow_incomplete``), an earlier export in ``out`` (unless
            ``overwrite``), no video to export; StoreMismatchError: an unknown tensor, a missing view.
    """
    import numpy as np

    from stages.core.errors import StoreError, StoreMismatchError
    from store import FeatureStore

    store = FeatureStore(store_path)
    if not store.complete and not allow_incomplete:
        raise StoreError(
            f"{store.path} is incomplete (extraction running or killed); finish it, or pass "
            "--allow-incomplete to export the videos committed so far"
        )
    spec = store.spec.tensor(tensor)  # an unknown name raises, listing the stored tensors
    videos = [v for v in store.videos if split is None or v.meta.get("split") == split]
    if not videos:
        have = sorted({str(v.meta.get("split")) for v in store.videos})
        raise StoreError(f"{store.path} has no {split!r} videos (splits present: {have}); drop --split")
    lacking = [v.id for v in videos if view not in v.views]
    if lacking:
        raise StoreMismatchError(
            f"{len(lacking)} videos of {store.path} have no view {view} (e.g. {lacking[0]!r} "
            f"has views {sorted(store.video(lacking[0]).views)}); pass --view with one of them"
        )
    folder = Path(out)
    if (folder / "manifest.json").exists() and not overwrite:
        raise StoreError(f"{folder} already holds an export (manifest.json); pass --overwrite or another OUT")
    folder.mkdir(parents=True, exist_ok=True)
    rows = [_export_video(store, v, tensor, view, fmt, np.dtype(dtype), folder) for v in videos]
    manifest = {
        "store": store.path,
        "tensor": tensor,
        "kind": spec.kind,
        "view": view,
        "format": fmt,
        "dtype": dtype,
        "shape": list(spec.shape),
        "classes": list(store.classes),
        "videos": rows,
    }
    _write_manifest(folder, manifest)
    return manifest


def _export_video(store: Any, rec: Any, tensor: str, view: int, fmt: str, dtype: Any, folder: Path) -> dict:
    """Write one video's array (under a temporary name, then renamed) and return its manifest row."""
    import numpy as np

    _, n = rec.views[view]
    time_s = store.row_meta(rec.id, view)["time_s"]  # [T]
    name = f"{rec.id}.{fmt}"
    tmp = folder / f".{name}.part"
    if fmt == "npy":
        array = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=dtype, shape=(n, *store.spec.tensor(tensor).shape)
        )
        for s in range(0, n, CHUNK_ROWS):
            rows = slice(s, min(n, s + CHUNK_ROWS))
            array[rows] = store.read(rec.id, view, rows, [tensor], dtype=dtype)[tensor]  # [t, *shape]
        array.flush()
        del array
    else:
        features = store.read(rec.id, view, None, [tensor], dtype=dtype)[tensor]  # [T, *shape]
        with open(tmp, "wb") as f:
            np.savez(f, features=features, time_s=time_s)
    os.replace(tmp, folder / name)
    span = float(time_s[-1] - time_s[0]) if n > 1 else 0.0
    label = store.classes[rec.label] if rec.label >= 0 else None
    return {
        "id": rec.id,
        "label": label,
        "label_index": rec.label,
        "split": rec.meta.get("split"),
        "file": name,
        "frames": n,
        "fps": rec.fps,
        "feature_fps": round((n - 1) / span, 6) if span > 0 else None,
        "time_start": float(time_s[0]),
        "time_end": float(time_s[-1]),
        "meta": rec.meta,
    }


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for row in manifest["videos"]:
            writer.writerow(["" if row[c] is None else row[c] for c in MANIFEST_COLUMNS])
    tmp = folder / ".manifest.json.part"
    tmp.write_text(json.dumps(manifest, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, folder / "manifest.json")  # last: its presence marks a finished export
