"""Every YAML under configs/ loads and validates against its schema (chosen by folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.core.config import load_config

ROOT = Path(__file__).parents[2] / "configs"
FILES = sorted(ROOT.rglob("*.yaml"))


def schema_for(path: Path) -> type:
    folder = path.relative_to(ROOT).parts[0]
    if folder in ("extract", "cluster"):
        from stages.extract.config import ExtractConfig

        return ExtractConfig
    if folder == "train":
        from stages.train.config import TrainConfig

        return TrainConfig
    if folder == "e2e":
        from stages.e2e.config import E2EConfig

        return E2EConfig
    if folder == "bench":
        from stages.bench.config import BenchConfig

        return BenchConfig
    from pipeline.run import PipelineConfig

    return PipelineConfig


def test_there_are_configs() -> None:
    assert len(FILES) >= 7, FILES  # a non-recursive glob would silently validate almost nothing


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_validates(path: Path) -> None:
    text = path.read_text()
    assert text.lstrip().startswith("#"), f"{path} should open with a comment giving its run command"
    cfg = load_config(schema_for(path), path)
    assert cfg is not None
    if path.parent.name == "bench":  # every job a bench would run validates too
        from stages.bench.runner import check

        check(cfg)


def test_pipeline_plan_validates_every_stage(tmp_path: Path) -> None:
    from pipeline.run import PipelineConfig, plan
    from stages.core.errors import ConfigError

    cfg = load_config(PipelineConfig, ROOT / "quickstart.yaml", [f"out={tmp_path}"])
    plans = plan(cfg)
    assert [p.dataset.name for p in plans] == ["appearance", "direction"]
    assert all(len(p.trains) == 3 for p in plans)
    assert plans[1].trains[2][1].data.store == plans[1].extract.store.path
    bad = load_config(
        PipelineConfig,
        ROOT / "quickstart.yaml",
        [f"out={tmp_path}", "train.optim.lrr=1", "extract.backbone.nme=x"],
    )
    with pytest.raises(ConfigError) as e:
        plan(bad)
    text = str(e.value)
    assert "optim.lrr" in text and "did you mean 'optim.lr'" in text and "backbone.nme" in text
