"""``twostage export-head``: a checkpoint's head as safetensors + JSON, rebuilt by ``load_head`` with
outputs identical to the checkpoint's own head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from stages.core.errors import CheckpointError, ConfigError
from stages.train.checks import load_checkpoint
from stages.train.evaluate import head_from_checkpoint
from stages.train.head_export import load_head
from stages.train.stage import run_train
from store import FeatureStore
from tests.stages.train.conftest import CLASSES, make_cfg, token_tensors

HEADS = {
    "linear": {"name": "linear"},
    "vivit_fe": {"name": "vivit_fe", "options": {"depth": 1}},
    "evl": {"name": "evl", "options": {"layers": 2}},  # recomputes q/k with the store's frozen weights
}


@pytest.fixture(scope="module")
def token_store(store_factory) -> Path:
    return store_factory("export_tokens", videos=8, rows=8, tensors=token_tensors())


@pytest.fixture(scope="module")
def trained(token_store, tmp_path_factory):
    """``head name -> its last.pt``, one short run each."""
    out = {}
    for name, head in HEADS.items():
        run = tmp_path_factory.mktemp(name)
        run_train(make_cfg(run, token_store, head=head, optim={"epochs": 1}))
        out[name] = run / "last.pt"
    return out


def features(config: dict, batch: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    frames = config["head"]["num_frames"]
    return {
        n: torch.randn(batch, frames, *shape, generator=g)
        for n, shape in config["features"]["tensors"].items()
    }


@pytest.mark.parametrize("name", list(HEADS))
def test_the_exported_head_gives_the_checkpoints_outputs_exactly(
    name, trained, token_store, tmp_path, capsys
):
    assert main(["export-head", str(trained[name]), str(tmp_path)]) == 0
    assert f"head {name}, 4 classes" in capsys.readouterr().out
    head, config = load_head(tmp_path)
    ckpt = load_checkpoint(trained[name], key="test")
    reference = head_from_checkpoint(ckpt, FeatureStore(token_store), key="test").eval()
    feats = features(config)
    with torch.no_grad():
        assert torch.equal(head(feats), reference(feats))
    assert config["classes"] == list(CLASSES) and config["head"]["inputs"] == ckpt["head"]["inputs"]
    specs = config["features"]["tensor_specs"]
    assert set(specs) == set(config["head"]["inputs"]) and all("layer" in s for s in specs.values())
    assert (
        config["features"]["backbone"]["name"] == "tiny-vit" and config["features"]["sampling"]["frames"] == 8
    )
    assert bool(config["frozen"]) == (name == "evl")
    assert json.loads((tmp_path / "head.json").read_text()) == config


def test_without_the_store_a_linear_head_exports_and_an_evl_head_asks_for_store(trained, tmp_path):
    for name in ("linear", "evl"):
        ckpt = load_checkpoint(trained[name], key="test")
        ckpt["store"]["path"] = str(tmp_path / "moved.zarr")
        torch.save(ckpt, tmp_path / f"{name}.pt")
    assert main(["export-head", str(tmp_path / "linear.pt"), str(tmp_path / "linear")]) == 0
    head, config = load_head(tmp_path / "linear")
    assert config["features"]["tensor_specs"] is None and config["frozen"] == []
    with pytest.raises(CheckpointError, match=r"evl.pt: its 'evl' head needs more .* pass --store"):
        main(["export-head", str(tmp_path / "evl.pt"), str(tmp_path / "evl")])


def test_an_export_is_refused_when_its_files_disagree_or_exist(trained, tmp_path):
    out = tmp_path / "linear"
    assert main(["export-head", str(trained["linear"]), str(out)]) == 0
    with pytest.raises(ConfigError, match=r"already holds an exported head .* --overwrite"):
        main(["export-head", str(trained["linear"]), str(out)])
    assert main(["export-head", str(trained["linear"]), str(out), "--overwrite"]) == 0
    weights = out / "head.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"has sha256 .* not one export; export the head again"):
        load_head(out)
    with pytest.raises(CheckpointError, match=r"holds no head.json"):
        load_head(tmp_path)
