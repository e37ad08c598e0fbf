"""Every user error through every entry point is one line that names the problem and the fix, never a
traceback (issue "a store nobody can silently damage", failures 6 and 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stages.core.config import load_config
from stages.core.errors import ConfigError, SourceError
from stages.extract.config import ExtractConfig
from stages.video.sources import read_source

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def assert_one_line(proc: subprocess.CompletedProcess[str], match: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err and err.startswith("twostage: error:"), err
    assert match in err, err


@pytest.fixture(scope="module")
def bad_lists(tmp_path_factory: pytest.TempPathFactory, direction_videos: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_lists")
    video = direction_videos / "videos" / sorted((direction_videos / "videos").iterdir())[0].name
    lists = {
        "path_is_a_list": [{"path": [str(video)], "label": "up"}],
        "bad_id": [{"path": str(video), "label": "up", "id": "../escape"}],
    }
    out = {}
    for name, rows in lists.items():
        out[name] = root / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["file_store"] = root / "store_is_a_file"
    out["file_store"].write_text("x")
    return out


@pytest.mark.parametrize(
    ("entry", "case", "match"),
    [
        ("stages.extract", "path_is_a_list", "path=[" ),
        ("stages.extract", "bad_id", "video id '../escape' is invalid"),
        ("stages.extract", "file_store", "is a file; a store is a folder"),
        ("stages.train", "not_a_store", "is not a twostage store"),
    ],
)  # fmt: skip
def test_user_errors_through_python_m_are_one_line(bad_lists, direction_videos, tmp_path, entry, case, match):
    config = REPO / (
        "configs/extract/tiny.yaml" if entry == "stages.extract" else "configs/train/linear.yaml"
    )
    if case == "file_store":
        args = [f"source={direction_videos / 'labels.csv'}", f"store.path={bad_lists['file_store']}"]
    elif case == "not_a_store":
        args = [f"data.store={tmp_path}", f"run.out={tmp_path / 'out'}"]
    else:
        args = [f"source={bad_lists[case]}", f"store.path={tmp_path / 's.zarr'}"]
    assert_one_line(run("-m", entry, str(config), *args), match)


def test_eval_of_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path):
    fake = tmp_path / "last.pt"
    fake.write_bytes(b"not a checkpoint")
    assert_one_line(run("-m", "pipeline", "eval", str(fake), str(tmp_path)), "is not a readable stage-two")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("run.max_failure_fraction=nan", "max_failure_fraction=nan: expected a fraction in [0, 1]"),
        ("run.max_failure_fraction=1.5", "expected a fraction in [0, 1]"),
        ("store.shard_mb=-1", "shard_mb=-1.0: expected MB per shard > 0"),
        ("store.commit_interval_s=-5", "commit_interval_s=-5.0: expected seconds >= 0"),
        ("run.decode_workers=0", "need decode_workers >= 1"),
        ("sampling.target_fps=0", "target_fps=0.0: expected frames per second > 0"),
        ("pool=0", "pool=0: expected a grid side >= 1"),
    ],
)
def test_nonsense_values_are_refused(override, match):
    with pytest.raises(ConfigError, match=match.replace("[", r"\[").replace("]", r"\]")):
        load_config(ExtractConfig, None, ["source=x.csv", override])


@pytest.mark.parametrize("value", [7, ["a.mp4"], {"p": 1}, True])
def test_a_jsonl_path_that_is_not_text_is_refused(tmp_path, value):
    lst = tmp_path / "list.jsonl"
    lst.write_text(json.dumps({"path": value, "label": "a"}) + "\n")
    with pytest.raises(SourceError, match=r"list.jsonl:1: path=.* expected text"):
        read_source(str(lst))
