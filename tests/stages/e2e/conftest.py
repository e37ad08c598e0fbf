"""Tiny `direction` videos and configs for end-to-end runs on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stages.core.config import from_dict
from stages.e2e.config import E2EConfig
from tests.stages.train.conftest import one_torch_thread  # noqa: F401 - autouse here too: one torch thread


def make_cfg(out: Path, source: Path, **sections: dict[str, Any]) -> E2EConfig:
    """A tiny run: test ViT at 32 px, 8 x 2 clips, global batch 1 (coarse shapes take up to 16 clips, so
    the shape changes inside an epoch), multigrid on, 4 baseline epochs (6 with multigrid)."""
    base: dict[str, dict[str, Any]] = {
        "data": {"source": str(source / "labels.csv"), "val_fraction": 0.25, "frames": 8, "stride": 2,
                 "crop": 32, "batch_size": 1, "workers": 0},
        "augment": {"scale": [0.5, 1.0], "flip": 0.0},
        "backbone": {"name": "test_openclip_vit", "trainable": "all"},
        "head": {"name": "vivit_fe", "options": {"depth": 1, "dropout": 0.2}},
        "optim": {"lr": 3e-3, "backbone_lr": 1e-3, "epochs": 4, "steps": [0, 2, 3], "warmup_epochs": 0.5},
        "multigrid": {"long_cycle": True, "short_cycle": True},
        "run": {"out": str(out), "plots": False, "log_every": 1000},
    }  # fmt: skip
    for name, values in sections.items():
        base[name] = base.get(name, {}) | values
    return from_dict(E2EConfig, base)


@pytest.fixture(scope="session")
def e2e_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 lossless 32x32 `direction` videos of 16 frames (4 classes): 24 train, 8 held out."""
    from stages.video.synth import generate

    out = tmp_path_factory.mktemp("e2e_direction")
    generate(out, task="direction", videos=32, seed=0, size=32, frames=16, fps=8.0)
    return out
