"""Stage two for recurrent (memory) heads: the config unpacked into the loop's parts, stream-ordered.

    Prepared (head, stores, ids, meta, resume) + TrainConfig
      --StreamDataset(mode="train"): B = data.batch_size streams of data.frames-row chunks--> StreamLoader
      --stream_step: head(chunk, memory, reset) -> loss; the memory is the step state fit checkpoints
      --evaluate: every held-out video online (evaluate_online), scored at its last chunk--> fit

``stage.train_head`` hands a head with ``recurrent = True`` (``memvit``) to :func:`train_recurrent`; every
other head trains on shuffled clips there. Optimizer groups, schedule and loop settings are the same.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from stages.train.config import TrainConfig
from stages.train.evaluate import evaluate_online
from stages.train.loop import (
    LoopSettings,
    cosine_schedule,
    fit,
    make_optimizer,
    param_groups,
    seed_everything,
)
from stages.train.online import online_loader
from stages.train.runtime import Dist
from stages.train.streams import StreamDataset, StreamLoader, stream_step


def train_recurrent(
    p: Any, cfg: TrainConfig, dist: Dist, device: torch.device, stop_after: int | None
) -> dict[str, Any]:
    """Train ``p.head`` (a ``stage.Prepared``) on stream-ordered chunks; returns fit's final figures."""
    d, o, r = cfg.data, cfg.optim, cfg.run
    seed_everything(r.seed + dist.rank)  # dropout differs per process; the init was seeded before
    head, cuda = p.head.to(device), device.type == "cuda"
    train = StreamDataset(p.train_set.store, p.train_set.ids, d.frames, d.stride, list(head.inputs),
                          streams=d.batch_size, mode="train", jitter=d.jitter, seed=r.seed, rank=dist.rank,
                          world=dist.world, stream_by=d.stream_by, integrity=d.integrity)  # fmt: skip
    data = StreamLoader(train, workers=d.workers, pin_memory=cuda)
    groups = param_groups(list(head.named_parameters()), lr=o.lr, weight_decay=o.weight_decay)
    optimizer = make_optimizer(groups, betas=o.betas, fused=cuda)
    steps_per_epoch = math.ceil(len(data) / o.accum_steps)
    schedule = cosine_schedule(round(o.warmup_epochs * steps_per_epoch), o.epochs * steps_per_epoch,
                               o.min_lr / o.lr)  # fmt: skip
    evaluate_fn = None
    if p.val_set is not None:
        val = online_loader(p.val_set.store, p.val_set.ids, frames=d.frames, stride=d.stride,
                            tensors=list(head.inputs), streams=d.eval_batch_size or 2 * d.batch_size,
                            stream_by=d.stream_by, integrity=d.integrity, rank=dist.rank, world=dist.world,
                            workers=d.workers, pin_memory=cuda)  # fmt: skip
        labels, num_classes = val.dataset.labels, p.meta["head"]["num_classes"]

        def evaluate_fn(model: torch.nn.Module) -> dict[str, Any]:
            return evaluate_online(
                model,
                val.batches(),
                labels,
                num_classes,
                device=device,
                bf16=r.bf16 and not r.fp16,
                dist=dist,
            )

    settings = LoopSettings(out=r.out, epochs=o.epochs, accum_steps=o.accum_steps, clip_grad=o.clip_grad,
                            bf16=r.bf16, fp16=r.fp16, eval_every=r.eval_every, log_every=r.log_every,
                            plots=r.plots, tensorboard=r.tensorboard,
                            checkpoint_every=r.checkpoint_every)  # fmt: skip
    step = stream_step(device, label_smoothing=o.label_smoothing, rank=dist.rank)
    return fit(head, data=data, optimizer=optimizer, schedule=schedule, step_fn=step, evaluate=evaluate_fn,
               settings=settings, meta=p.meta, dist=dist, device=device, resume=p.resume,
               stop_after=stop_after)  # fmt: skip


__all__ = ["StreamDataset", "train_recurrent"]
