"""Online inference for memory heads: each video run chunk by chunk, whatever its length, with memory
bounded by the head's M chunks.

    store + ids --StreamDataset(mode="eval"): every video whole in one of B streams, in order--> batches
      --head(chunk feats [B, T, ...], memory, reset) per step--> chunk softmax [B, C], memory for the next
      --per video: the last chunk's softmax, the sum over its chunks, every chunk's prediction (optional)

Only one chunk per stream is read at a time and the memory has a fixed size (:func:`memory_bytes`), so
host and device memory stay flat in video length; what grows is the output (a few numbers per chunk).
Metrics come from :func:`stages.train.evaluate.evaluate_online`.

Example:
    >>> loader = online_loader(fs, ids, frames=8, stride=1, tensors=head.inputs, streams=16)  # doctest: +SKIP
    >>> run = run_online(head, loader.batches(), num_videos=len(ids), num_classes=2,  # doctest: +SKIP
    ...                  device=torch.device("cpu"))
    >>> run.last.argmax(1)  # each video's prediction after its last chunk  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stages.train.runtime import autocast, to_device
from stages.train.streams import StreamDataset, StreamLoader
from store import FeatureStore


@dataclass
class OnlineRun:
    """What an online pass gathers per video (N videos, C classes), and per chunk when asked."""

    last: torch.Tensor  # [N, C] softmax of each video's last chunk (float64)
    total: torch.Tensor  # [N, C] softmax summed over each video's chunks
    chunks: torch.Tensor  # [N] chunks seen per video
    stats: torch.Tensor  # [3] chunk hits, chunk cross-entropy sum, chunks
    per_chunk: list[tuple[int, int, int, float]] = field(default_factory=list)  # (video, chunk, pred, prob)

    def by_video(self) -> dict[int, list[tuple[int, int, float]]]:
        """``keep_chunks``: per video number, its chunks' ``(chunk, top class, probability)`` in order."""
        out: dict[int, list[tuple[int, int, float]]] = {}
        for video, chunk, pred, prob in sorted(self.per_chunk):
            out.setdefault(video, []).append((chunk, pred, prob))
        return out


def online_loader(
    store: FeatureStore, ids: Sequence[str], *, frames: int, stride: int, tensors: Sequence[str],
    streams: int, stream_by: str = "video", integrity: str = "check", rank: int = 0, world: int = 1,
    workers: int = 0, pin_memory: bool = False,
) -> StreamLoader:  # fmt: skip
    """Batches that walk every video of ``ids`` (this process's share) whole, in order, in ``streams``."""
    dataset = StreamDataset(store, ids, frames, stride, tensors, streams=streams, mode="eval", rank=rank,
                            world=world, stream_by=stream_by, integrity=integrity)  # fmt: skip
    return StreamLoader(dataset, workers=workers, pin_memory=pin_memory)


def memory_bytes(memory: Any) -> int:
    """Bytes held by a memory state (tensors in nested dicts and lists)."""
    if isinstance(memory, torch.Tensor):
        return memory.numel() * memory.element_size()
    if isinstance(memory, dict):
        return sum(memory_bytes(v) for v in memory.values())
    if isinstance(memory, (list, tuple)):
        return sum(memory_bytes(v) for v in memory)
    return 0


@torch.no_grad()
def run_online(
    model: nn.Module, batches: Iterable[dict[str, Any]], *, num_videos: int, num_classes: int,
    device: torch.device, bf16: bool = True, keep_chunks: bool = False,
    on_step: Callable[[dict[str, Any], Any], None] | None = None,
) -> OnlineRun:  # fmt: skip
    """Run a recurrent head over stream batches; ``on_step(batch, memory)`` sees each step (tests, probes)."""
    model.eval()
    head = getattr(model, "module", model)
    shapes = ((num_videos, num_classes), (num_videos, num_classes), (num_videos,), (3,))
    run = OnlineRun(*(torch.zeros(s, dtype=torch.float64, device=device) for s in shapes))
    memory = None
    for batch in batches:
        feats, labels = to_device(batch, device)
        memory = head.init_memory(len(labels), device) if memory is None else memory
        with autocast(device, bf16):
            logits, memory = model(feats, memory=memory, reset=batch["reset"].to(device))
        real = batch["weight"].to(device) > 0  # [B]: streams that read a chunk of a video
        logits, labels = logits.float()[real], labels[real]  # [B', C], [B']
        video, probs = batch["video"].to(device)[real], logits.softmax(dim=1).double()  # [B'], [B', C]
        run.last[video] = probs  # chunks arrive in order: the latest is the last one so far
        run.total.index_add_(0, video, probs)
        run.chunks.index_add_(0, video, torch.ones_like(video, dtype=torch.float64))
        known = labels >= 0  # unlabelled videos (twostage predict) are predicted, not scored
        hits = (probs.argmax(dim=1) == labels)[known].sum().double()
        loss = F.cross_entropy(logits[known], labels[known], reduction="sum").double()
        run.stats += torch.stack([hits, loss, hits.new_tensor(int(known.sum()))])
        if keep_chunks:
            top, chunk = probs.max(dim=1), batch["chunk"][real.cpu()]
            run.per_chunk += zip(video.tolist(), chunk.tolist(), top.indices.tolist(), top.values.tolist(),
                                 strict=True)  # fmt: skip
        if on_step is not None:
            on_step(batch, memory)
    return run
