"""What a head learns to predict when it is more than the store's one ``label``: ``data.targets``.

Stage one keeps a video's targets beyond its class ``label`` in ``meta["targets"]`` (source-list columns
``label:<name>`` and ``labels``; the EPIC-Kitchens adapter's ``verb`` / ``noun``, Charades' ``labels``).
``data.targets: [verb, noun]`` trains one head whose output is the targets' logits side by side, so any
head serves unchanged::

    head(feats) -> logits [B, C_verb + C_noun + ...]
        single-label target (one class per video): its slice --softmax / cross-entropy--> top-1, top-5,
                                                    mean class accuracy
        multi-label target (a set of classes):      its slice --sigmoid / binary cross-entropy--> mAP
    labels [B, W]: one column per single-label target (class index, -1 when the video has none: ignored),
                   C columns of 0/1 per multi-label target

``label`` names the store's own label (its ``classes``). A target's classes are the store's ``classes``
when every value it takes is one of them (Charades' codes, EPIC's verbs: the official order), else its
sorted values (numerically when all are integers). The first target leads: its top-1 (or mAP) is the
``top1`` that picks ``best.pt``; ``<name>_top1`` / ``<name>_mAP`` are there for each, and
``joint_top1`` (every single-label target right: EPIC's "action") when there are several.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core.errors import ConfigError
from stages.train.metrics import multilabel_metrics, video_metrics
from store import FeatureStore


@dataclass(frozen=True)
class Target:
    """One target: its name, class names, kind, and where it sits in the logits and the label columns."""

    name: str
    classes: tuple[str, ...]
    multi: bool  # multi-label: a set of classes per video (sigmoid); else one class (softmax)
    start: int  # its first logit
    column: int  # its first label column

    @property
    def stop(self) -> int:
        return self.start + len(self.classes)

    @property
    def columns(self) -> slice:
        return slice(self.column, self.column + (len(self.classes) if self.multi else 1))


class Targets:
    """The targets of one head, in order (see the module docstring)."""

    def __init__(self, specs: Iterable[tuple[str, Sequence[str], bool]]) -> None:
        self.items: list[Target] = []
        start = column = 0
        for name, classes, multi in specs:
            self.items.append(Target(name, tuple(classes), multi, start, column))
            start += len(classes)
            column += len(classes) if multi else 1
        self.num_outputs, self.width = start, column

    # ------------------------------------------------------------------ building and recording

    @classmethod
    def from_store(cls, store: FeatureStore, names: Sequence[str]) -> Targets:
        """The targets ``names`` of ``store``'s videos; refuses a name no video carries, or a name used as
        both one class and a set of classes."""
        if len(set(names)) != len(names):
            raise ConfigError(f"data.targets={list(names)} names a target twice; list each once")
        values: dict[str, list[Any]] = {}
        for rec in store.videos:
            for name, v in (rec.meta.get("targets") or {}).items():
                values.setdefault(name, []).append(v)
        specs = []
        for name in names:
            if name == "label":
                specs.append(("label", list(store.classes), False))
                continue
            if name not in values:
                have = ", ".join(["label", *sorted(values)])
                raise ConfigError(
                    f"data.targets: no video of {store.path} has a target {name!r}; it has: {have}. Targets "
                    "come from the source list's 'label:<name>' and 'labels' columns (or an adapter's, e.g. "
                    "epic100's verb and noun): extract from a list that has them"
                )
            kinds = {isinstance(v, list) for v in values[name]}
            if len(kinds) > 1:
                raise ConfigError(
                    f"data.targets: target {name!r} of {store.path} is one class for some videos and a list "
                    "of classes for others; give it one form in the source list"
                )
            multi = kinds == {True}
            found = {c for v in values[name] for c in (v if multi else [v])}
            specs.append((name, class_order(found, store.classes), multi))
        for name, classes, multi in specs:
            if len(classes) < (1 if multi else 2):
                raise ConfigError(
                    f"data.targets: target {name!r} has {len(classes)} classes; a single-label target needs "
                    "at least 2, a multi-label one at least 1"
                )
        return cls(specs)

    @classmethod
    def from_description(cls, description: list[dict[str, Any]]) -> Targets:
        """The targets a checkpoint recorded (``head["targets"]``)."""
        return cls((d["name"], d["classes"], bool(d["multi"])) for d in description)

    @classmethod
    def of_head(cls, head: dict[str, Any]) -> Targets | None:
        """The targets of a checkpoint's head description; None for a head of the store's one label."""
        return cls.from_description(head["targets"]) if head.get("targets") else None

    def describe(self) -> list[dict[str, Any]]:
        """What checkpoints record (``head["targets"]``)."""
        return [{"name": t.name, "classes": list(t.classes), "multi": t.multi} for t in self.items]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.items]

    def encode(self, store: FeatureStore, ids: Sequence[str]) -> np.ndarray:
        """Label columns ``[N, width]`` of the videos ``ids``; a class this head does not know (another
        store's) is left out of the metrics, with a warning."""
        out = np.zeros((len(ids), self.width), dtype=np.int64)
        unknown: dict[str, set[str]] = {}
        for t in self.items:
            index = {c: i for i, c in enumerate(t.classes)}
            for n, vid in enumerate(ids):
                rec = store.video(vid)
                if t.name == "label":
                    out[n, t.column] = rec.label
                    continue
                v = (rec.meta.get("targets") or {}).get(t.name)
                if t.multi:
                    for c in v or []:
                        if c in index:
                            out[n, t.column + index[c]] = 1
                        else:
                            unknown.setdefault(t.name, set()).add(c)
                else:
                    out[n, t.column] = index.get(v, -1) if v is not None else -1
                    if v is not None and v not in index:
                        unknown.setdefault(t.name, set()).add(v)
        for name, classes in unknown.items():
            warnings.warn(f"{store.path}: target {name!r} has classes the head was not trained on "
                          f"({sorted(classes)[:5]}...): left out of its metrics", stacklevel=2)  # fmt: skip
        return out

    # ------------------------------------------------------------------ training and scoring

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """The sum over targets of cross-entropy (single-label; videos without the target ignored) and
        binary cross-entropy (multi-label, mean over classes), in float32."""
        logits, total = logits.float(), logits.new_zeros((), dtype=torch.float32)
        for t in self.items:
            x = logits[:, t.start : t.stop]
            if t.multi:
                total = total + F.binary_cross_entropy_with_logits(x, labels[:, t.columns].float())
            else:
                y = labels[:, t.column]
                if (y >= 0).any():
                    total = total + F.cross_entropy(x, y, ignore_index=-1, label_smoothing=label_smoothing)
        return total

    def lead(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first target's ``(logits [B, C], labels [B])`` for the loop's running top-1: a multi-label
        target gives, per clip, its top-scoring class when that class is present, else -1 (precision@1)."""
        t = self.items[0]
        x = logits[:, t.start : t.stop]
        if not t.multi:
            return x, labels[:, t.column]
        top = x.argmax(dim=1)
        present = labels[:, t.columns].gather(1, top[:, None])[:, 0] > 0
        return x, torch.where(present, top, torch.full_like(top, -1))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax per single-label slice, sigmoid per multi-label slice: ``[B, num_outputs]``."""
        parts = [
            logits[:, t.start : t.stop].sigmoid() if t.multi else logits[:, t.start : t.stop].softmax(dim=1)
            for t in self.items
        ]
        return torch.cat(parts, dim=1)

    def metrics(self, probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Video metrics from averaged probabilities ``[N, num_outputs]`` and label columns ``[N, width]``."""
        per: dict[str, dict[str, Any]] = {}
        right = torch.ones(len(labels), dtype=torch.bool)
        known = torch.ones(len(labels), dtype=torch.bool)
        for t in self.items:
            p = probs[:, t.start : t.stop]
            if t.multi:
                per[t.name] = multilabel_metrics(p, labels[:, t.columns])
                continue
            y = labels[:, t.column]
            has = y >= 0
            per[t.name] = video_metrics(p[has], y[has])
            right &= p.argmax(dim=1) == y
            known &= has
        lead = per[self.items[0].name]
        out: dict[str, Any] = {
            "top1": lead["mAP"] if self.items[0].multi else lead["top1"],
            "top5": lead.get("top5"),
            "mean_class_acc": lead.get("mean_class_acc"),
            "videos": len(labels),
            "targets": per,
        }
        for name, m in per.items():
            out |= {f"{name}_{k}": v for k, v in m.items() if k in ("top1", "top5", "mAP")}
        if sum(not t.multi for t in self.items) > 1:
            out["joint_top1"] = right[known].double().mean().item() if known.any() else None
        return out


def class_order(found: Iterable[str], store_classes: Sequence[str]) -> list[str]:
    """A target's classes: the store's own class order when it holds every value, else sorted values
    (numerically when all are integers)."""
    found = set(found)
    if found and found <= set(store_classes):
        return list(store_classes)
    if all(c.lstrip("-").isdigit() for c in found):
        return sorted(found, key=int)
    return sorted(found)
