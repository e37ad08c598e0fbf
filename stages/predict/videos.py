"""``twostage predict CHECKPOINT INPUT...``: top-k classes per video from a stage-two checkpoint.

    videos --stage one (the checkpoint's own extract config: backbone, weights, preprocessing, sampling)
      --> scratch store (temporary, deleted after) --head, every stored view--> softmax mean [C] --> top-k
    feature store ----------------------------------------^
    a memory head (memvit): every video run online, chunk by chunk with memory bounded by M (as
      ``twostage eval``) --> the last chunk's softmax --> top-k, and each chunk's top class

Stage one is reused whole (:func:`stages.extract.stage.run_extract`), so the features are bit-for-bit
those an extraction with the same config writes; bad files are reported and skipped by it.

Example:
    >>> predict("runs/vivit/best.pt", ["clip.mp4"], topk=3)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from stages.core.config import from_dict
from stages.core.errors import CheckpointError, ConfigError
from stages.extract.config import ExtractConfig
from stages.extract.stage import run_extract
from stages.models.weights import sha256_file
from stages.train import checks
from stages.train.data import ClipDataset, EpochLoader
from stages.train.evaluate import checkpoint_device, head_from_checkpoint, online_stream
from stages.train.online import run_online
from stages.train.runtime import autocast, to_device
from stages.train.targets import Targets
from stages.video import decode
from store import FeatureStore


def is_store(path: str) -> bool:
    """A feature store is a directory with Zarr's ``zarr.json`` at its root."""
    return Path(path, "zarr.json").is_file()


def extract_config(ckpt: dict[str, Any], key: str) -> ExtractConfig:
    """The extract config of the store the checkpoint was trained on: recorded in the checkpoint (since
    checkpoints carry it), else read from that store's attributes."""
    if ckpt["store"].get("extract"):
        return from_dict(ExtractConfig, ckpt["store"]["extract"], source=key)
    path = ckpt["store"]["path"]
    if not is_store(path):
        raise CheckpointError(
            f"{key}: the store it was trained on ({path}) is gone, and with it the extract config "
            "(sampling, preprocessing) to run on raw videos; extract the videos with that config and pass "
            "the store as INPUT"
        )
    return from_dict(ExtractConfig, FeatureStore(path).spec.config)


def check_weights(backbone: dict[str, Any], weights_file: str | None, key: str) -> None:
    """Refuse, before any decoding, a weights file that is missing or is not the one the head was trained
    on (sha256); weights fetched by name are checked against the spec after stage one."""
    want = backbone.get("sha256")
    if not want or not weights_file:
        return
    if not Path(weights_file).is_file():
        raise CheckpointError(
            f"{key}: its backbone weights {weights_file} (sha256 {want}) are missing; put that file back "
            "(or a copy with the same sha256) before predicting from raw videos"
        )
    have = sha256_file(Path(weights_file))
    if have != want:
        raise CheckpointError(
            f"{key}: backbone weights {weights_file} have sha256 {have}, but the head was trained on "
            f"features of sha256 {want}; use the weights it was trained with"
        )


def video_list(inputs: Sequence[str], out: Path, window: float | None = None, hop: float | None = None,
               decoder: str = "auto") -> tuple[str, dict[str, dict[str, Any]]]:  # fmt: skip
    """A source for stage one: one list or folder as given, else a csv of the video files (with ``window``:
    one row per window of each file, ``start``/``end`` in seconds); and each windowed id's place."""
    if window is None and len(inputs) == 1 and (Path(inputs[0]).is_dir() or inputs[0].endswith(LISTS)):
        return inputs[0], {}
    files = [p for p in inputs if not Path(p).is_dir() and not p.endswith(LISTS)]
    missing = [p for p in inputs if not Path(p).exists()]
    if missing or len(files) != len(inputs):
        bad = (missing or [p for p in inputs if p not in files])[0]
        what = "no such file" if missing else "a list or folder among files"
        raise ConfigError(
            f"INPUT {bad}: {what}; give video files, or one folder, list or store (--window: files only)"
        )
    rows, places = [], {}
    for path in files:
        path = str(Path(path).resolve())
        if window is None:
            rows.append({"path": path})
            continue
        for vid, start, end in windows(path, window, hop or window, decoder):
            rows.append({"path": path, "id": vid, "start": start, "end": end})
            places[vid] = {"start": start, "end": end}
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "id", "start", "end"])
        w.writeheader()
        w.writerows(rows)
    return str(out), places


LISTS = (".csv", ".jsonl", ".tar")


def windows(path: str, window: float, hop: float, decoder: str) -> list[tuple[str, float, float]]:
    """``(id, start_s, end_s)`` of each window of one file; an unreadable file gets one whole-file row so
    stage one reports it like any bad video."""
    if window <= 0 or hop <= 0:
        raise ConfigError(
            f"--window {window} --hop {hop}: expected positive seconds (e.g. --window 4 --hop 2)"
        )
    try:
        with decode.open_video(path, backend=decoder, name=path) as reader:
            duration = reader.info.duration
    except Exception:  # noqa: BLE001 - reported by stage one, which opens it again
        return [(f"{Path(path).stem}__w0000", 0.0, window)]
    starts = [k * hop for k in range(max(1, int((duration - window) // hop) + 1))]
    return [(f"{Path(path).stem}__w{k:04d}", round(t, 3), round(min(t + window, duration), 3))
            for k, t in enumerate(starts)]  # fmt: skip


@torch.no_grad()
def score_store(
    head: Any, store: FeatureStore, ckpt: dict[str, Any], device: str, targets: Targets | None
) -> dict[str, torch.Tensor]:
    """Per video id: the softmax averaged over every stored view and eval clip (as ``twostage eval``);
    a head of several targets: each target's softmax (or sigmoid, multi-label) side by side."""
    data = ckpt["config"]["data"]
    ids = [v.id for v in store.videos]
    dataset = ClipDataset(store, ids, data["frames"], data["stride"], "eval", head.inputs,
                          eval_clips=data["eval_clips"], short_videos=data["short_videos"])  # fmt: skip
    dev, bf16 = checkpoint_device(ckpt, device)
    head = head.to(dev).eval()
    probs = torch.zeros(len(ids), ckpt["head"]["num_classes"], dtype=torch.float64)  # [N, C]
    counts = torch.zeros(len(ids), dtype=torch.float64)
    for batch in EpochLoader(dataset, batch_size=32, shuffle=False, workers=0).batches():
        feats, _ = to_device(batch, dev)
        with autocast(dev, bf16):
            logits = head(feats).float()  # [B, C]
            p = (targets.probabilities(logits) if targets else logits.softmax(dim=1)).double().cpu()
        probs.index_add_(0, batch["video"], p)
        counts.index_add_(0, batch["video"], torch.ones(len(p), dtype=torch.float64))
    return {ids[i]: probs[i] / counts[i] for i in range(len(ids)) if counts[i] > 0}


@torch.no_grad()
def score_online(
    head: Any, store: FeatureStore, ckpt: dict[str, Any], device: str, classes: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, list[dict[str, Any]]]]:
    """A memory head run online, chunk by chunk with memory bounded by its M chunks (as ``twostage eval``):
    per video id the softmax of its last chunk (which has seen the video through memory) and every
    chunk's top class."""
    ids = [v.id for v in store.videos]
    dev, bf16 = checkpoint_device(ckpt, device)
    stream = online_stream(ckpt, head, store, ids, streams=min(16, len(ids)))
    out = run_online(head.to(dev), stream.batches(), num_videos=len(ids), num_classes=len(classes),
                     device=dev, bf16=bf16, keep_chunks=True)  # fmt: skip
    chunks = {
        ids[video]: [{"chunk": c, "class": classes[pred], "prob": round(prob, 6)} for c, pred, prob in rows]
        for video, rows in out.by_video().items()
    }
    last = out.last.cpu()
    return {ids[i]: last[i] for i in range(len(ids)) if out.chunks[i] > 0}, chunks


def predict(
    checkpoint: str, inputs: Sequence[str], *, topk: int = 5, device: str = "auto", progress: bool = True,
    workers: int = 1, window: float | None = None, hop: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``{"predictions": [{"id", "source", "top": [[class, prob], ...]}], "failures": [...]}``; with
    ``window`` (seconds), one prediction per window of each video (``start``, ``end`` added)."""
    ckpt = checks.load_checkpoint(checkpoint, key="CHECKPOINT")
    classes = list(ckpt["store"]["classes"])
    if len(inputs) == 1 and is_store(inputs[0]):
        if window is not None:
            raise ConfigError("--window needs raw videos: a store holds the frames its sampling kept only")
        store, failures = FeatureStore(inputs[0]), []
        return _result(ckpt, checkpoint, store, device, topk, classes, failures)
    cfg = extract_config(ckpt, f"CHECKPOINT {checkpoint}")
    check_weights(ckpt["store"]["backbone"], cfg.backbone.weights_file, f"CHECKPOINT {checkpoint}")
    with tempfile.TemporaryDirectory(prefix="twostage-predict-") as tmp:
        source, places = video_list(inputs, Path(tmp, "videos.csv"), window, hop, cfg.run.decoder)
        scratch = replace(cfg.store, path=str(Path(tmp, "s.zarr")), overwrite=False)
        cfg = replace(cfg, source=source, classes=classes, store=scratch,
                      run=replace(cfg.run, part=None, limit=None, progress=progress, decode_workers=workers,
                                  fail_fast=False))  # fmt: skip
        stats = run_extract(cfg)
        store = FeatureStore(cfg.store.path)
        result = _result(ckpt, checkpoint, store, device, topk, classes, stats.failures)
    for row in result["predictions"]:
        row |= places.get(row["id"], {})
    return result


def _top(p: torch.Tensor, classes: list[str], k: int) -> list[list[Any]]:
    top = p.topk(min(k, len(classes)))
    return [[classes[i], round(v, 6)] for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)]


def _result(ckpt: dict[str, Any], checkpoint: str, store: FeatureStore, device: str, topk: int,
            classes: list[str], failures: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    head = head_from_checkpoint(ckpt, store, key=f"checkpoint {checkpoint}")  # refuses other weights
    chunks: dict[str, list[dict[str, Any]]] = {}
    targets = Targets.of_head(ckpt["head"])
    if getattr(head, "recurrent", False):
        probs, chunks = score_online(head, store, ckpt, device, classes)
    else:
        probs = score_store(head, store, ckpt, device, targets)
    sources = {v.id: v.source for v in store.videos}
    slices: list[tuple[str | None, list[str], int]] = [(None, classes, 0)]
    if targets:
        slices = [(t.name, list(t.classes), t.start) for t in targets.items]
    rows = []
    for vid, p in sorted(probs.items()):
        tops = {name: _top(p[start : start + len(names)], names, topk) for name, names, start in slices}
        row: dict[str, Any] = {"id": vid, "source": sources.get(vid), "top": next(iter(tops.values()))}
        if targets:  # the first target leads ("top"); every target's top-k (sigmoid for multi-label)
            row["targets"] = tops
        if vid in chunks:  # a memory head: every chunk's prediction, with the memory of those before it
            row["chunks"] = chunks[vid]
        rows.append(row)
    failures = [
        {"id": f["id"], "path": f["path"], "error": str(f["error"]).splitlines()[0]} for f in failures
    ]
    return {"predictions": rows, "failures": failures}
