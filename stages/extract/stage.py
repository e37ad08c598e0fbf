"""Stage one: ``run_extract(cfg)`` extracts every video of a source list into a feature store.

The command line (``twostage extract``, ``python -m stages.extract``) is ``pipeline/commands/extract.py``.
Reads top to bottom: config -> source list -> backbone -> store spec -> part writer (skipping committed
videos) -> overlapped extraction -> finalize -> summary. See ``stages/extract/runner.py`` for the engine.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from stages.core.config import to_dict
from stages.core.errors import ConfigError
from stages.extract.config import ExtractConfig
from stages.extract.runner import Extractor, Stats
from stages.extract.worker import DecodeJob
from stages.models import Backbone, TensorRequest, build_backbone
from stages.video import sources
from stages.video.preprocess import Preprocessing
from stages.video.sampling import Sampling
from store import (
    FeatureStore,
    PartWriter,
    StoreSpec,
    TensorSpec,
    create_store,
    finalize,
    layout,
    set_complete,
)
from store.contract import recomputable_blocks


def parse_requests(names: list[str], pool: int) -> list[TensorRequest]:
    """``["b-1.tokens", "final.cls"]`` -> requests (negative block numbers count from the end)."""
    out, problems = [], []
    for name in names:
        layer, _, kind = name.rpartition(".")
        if not layer:
            problems.append(f"tensors: {name!r} is not '<layer>.<kind>' (e.g. b-1.tokens, final.cls, b8.q)")
            continue
        out.append(TensorRequest(layer=layer, kind=kind, pool=pool if kind == "pooled" else None))
    if problems:
        raise ConfigError(problems)
    return out


def build_spec(
    cfg: ExtractConfig,
    backbone: Backbone,
    requests: list[TensorRequest],
    classes: list[str],
    frozen: list[str],
) -> StoreSpec:
    shapes = backbone.output_shapes(requests)
    tensors = tuple(
        TensorSpec(
            name=r.name,
            layer=r.layer,
            kind=r.kind,
            shape=tuple(shapes[r.name]),
            dtype=cfg.store.dtype,
            pool=r.pool,
        )
        for r in requests
    )
    bb = backbone.spec
    preprocessing = preprocessing_of(cfg, backbone).to_json()
    return StoreSpec(
        backbone=bb,
        preprocessing=preprocessing,
        sampling=to_dict(cfg.sampling),
        tensors=tensors,
        classes=tuple(classes),
        config=to_dict(cfg),
        storage={
            "compression": cfg.store.compression,
            "shard_mb": cfg.store.shard_mb,
            "chunk_crc": cfg.store.chunk_crc,
        },
        frozen=tuple(frozen),
    )


def preprocessing_of(cfg: ExtractConfig, backbone: Backbone) -> Preprocessing:
    """The one place stage one derives its preprocessing: the backbone's spec + ``sampling.short_side``."""
    return Preprocessing.from_backbone(backbone.spec, cfg.sampling.short_side)


def decode_job(cfg: ExtractConfig, backbone: Backbone) -> DecodeJob:
    s = cfg.sampling
    sampling = Sampling(
        mode=s.mode, frames=s.frames, stride=s.stride, temporal_views=s.temporal_views,
        spatial_views=s.spatial_views, split=s.split, target_fps=s.target_fps, max_frames=s.max_frames,
        seed=cfg.run.seed,
    )  # fmt: skip
    return DecodeJob(
        sampling=sampling,
        pre=preprocessing_of(cfg, backbone),
        decoder=cfg.run.decoder,
        chunk=min(32, cfg.backbone.batch_frames),
    )


def select_part(items: list[sources.VideoItem], part: str | None) -> tuple[list[int], str, bool]:
    """Item numbers of this part, the part's store name, and whether this process is the coordinator."""
    if part is None:
        return list(range(len(items))), layout.part_name(0), True
    try:
        index, count = (int(x) for x in part.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        raise ConfigError(f"run.part: {part!r} is not 'I/N' with 0 <= I < N (e.g. 3/8)") from None
    return split_parts(items, count)[index], layout.part_name(index, count), False


def split_parts(items: Sequence[sources.VideoItem], count: int) -> list[list[int]]:
    """The item numbers of each part of the ``count``-way split (``--part I/N`` and the dask driver):
    round-robin over the sorted ids, stable whatever the list order, except that the segments of one file
    (``meta["group"]``) go to one part together, which opens the file once for all of them."""
    units: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        units.setdefault(item.meta.get("group") or item.id, []).append(i)
    parts: list[list[int]] = [[] for _ in range(count)]
    for k, key in enumerate(sorted(units)):
        parts[k % count] += units[key]
    return [sorted(p, key=lambda i: items[i].id) for p in parts]


def prepare_store(
    cfg: ExtractConfig, classes: list[str], device: str
) -> tuple[Backbone, list[TensorRequest]]:
    """Build the backbone, resolve the tensors, and create (or check) the store with their spec.

    The one place a store's spec is made: stage one and the dask driver both call it.
    """
    backbone = build_backbone(
        cfg.backbone.name,
        pretrained=cfg.backbone.pretrained,
        weights_file=cfg.backbone.weights_file,
        device=device,
        random_init=cfg.backbone.random_init,
    )
    requests = backbone.resolve(parse_requests(cfg.tensors, cfg.pool))
    stored = [r.name for r in requests]
    layers = recomputable_blocks(stored, backbone.spec["depth"]) if backbone.qk_recomputable else []
    frozen = backbone.frozen_weights(layers) if layers else {}
    spec = build_spec(cfg, backbone, requests, classes, sorted(frozen))
    create_store(cfg.store.path, spec, overwrite=cfg.store.overwrite, frozen=frozen)
    return backbone, requests


def run_extract(
    cfg: ExtractConfig, *, part: str | None = None, items: list[int] | None = None, steal_lock: bool = False
) -> Stats:
    """Extract every video of ``cfg.source`` not yet committed; returns the run's statistics.

    ``steal_lock`` takes over the part's LOCK whoever holds it: for a retried cluster task whose writer
    died on another host (the dask driver decides).
    """
    video_items, classes = sources.read_source(cfg.source, classes=cfg.classes)
    numbers, default_part, coordinator = select_part(video_items, cfg.run.part)
    part = part or default_part
    if items is not None:
        numbers = items
    backbone, requests = prepare_store(cfg, classes, _device(cfg.backbone.device))
    done = {v.id for v in FeatureStore(cfg.store.path).videos}
    todo = [n for n in numbers if video_items[n].id not in done]
    if cfg.run.limit is not None:
        todo = todo[: cfg.run.limit]
    if coordinator and todo:
        set_complete(cfg.store.path, None)
    progress = _progress(len(todo), cfg.run.progress)
    with PartWriter(
        cfg.store.path, part, commit_interval_s=cfg.store.commit_interval_s, steal_lock=steal_lock
    ) as writer:
        extractor = Extractor(
            backbone,
            requests,
            decode_job(cfg, backbone),
            writer,
            classes=classes,
            workers=cfg.run.decode_workers,
            batch_frames=cfg.backbone.batch_frames,
            quantise=cfg.store.dtype == "int8",
            fail_fast=cfg.run.fail_fast,
            progress=progress,
            video_timeout_s=cfg.run.video_timeout_s,
            bf16=cfg.backbone.bf16,
            fp16=cfg.backbone.fp16,
        )
        stats = extractor.run(video_items, todo)
    if progress is not None:
        progress.close()
    if coordinator and cfg.run.limit is None:
        finalize(cfg.store.path, {"frames_per_s": stats.frames / max(stats.wall_s, 1e-9)})
    stats.skipped = len(numbers) - len(todo)
    return stats


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="video", dynamic_ncols=True, file=sys.stderr)


def summary(stats: Stats) -> dict[str, Any]:
    """The end-of-run figures: counts, and each component's throughput (frames per busy second)."""

    def rate(seconds: float) -> float | None:
        return round(stats.frames / seconds, 1) if seconds > 0 else None

    return {
        "videos": stats.scheduled,
        "committed": stats.committed,
        "failed": stats.failed,
        "skipped": stats.skipped,
        "frames": stats.frames,
        "wall_s": round(stats.wall_s, 3),
        "frames_per_s": rate(stats.wall_s),
        "videos_per_s": round(stats.committed / max(stats.wall_s, 1e-9), 2),
        "decode_frames_per_busy_s": rate(stats.decode_s),
        "model_frames_per_s": rate(stats.model_s),
        "write_frames_per_s": rate(stats.write_s),
        "failures": stats.failures,
    }
