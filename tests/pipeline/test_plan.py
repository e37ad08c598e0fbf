"""``twostage plan``: the arithmetic on a hand-computed case, the byte rule, the command on a tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main as cli
from stages.core.errors import ConfigError
from stages.extract.plan import Probes, Workload, bytes_per_frame, estimate


def test_costs_and_the_choice_by_hand() -> None:
    # 100 videos x 64 stored frames = 6,400 frames; a head reads 8 frames per video per epoch; 10 epochs.
    per_frame = {"cache float16": 1_000_000, "cache int8": 500_000, "cache CLS only": 1_000}
    w = Workload(videos=100, frames_per_video=64, clip_frames=8, epochs=10, bytes_per_frame=per_frame)
    p = Probes(disk_write_mbps=100, disk_read_mbps=200, model_frames_per_s=640, decode_frames_per_s=320)
    plan = estimate(w, p)
    by = {o.name: o for o in plan.options}
    make = 6_400 / 320  # decode (320 frames/s) binds: the model (640) runs beside it, once
    f16 = by["cache float16"]
    assert f16.store_gb == pytest.approx(6.4)  # 6,400 frames x 1 MB
    assert f16.extract_s == pytest.approx(make + 6_400 / 100)  # + 64 s writing 6,400 MB at 100 MB/s
    assert f16.epoch_s == pytest.approx(800 / 200)  # 100 clips x 8 frames x 1 MB at 200 MB/s = 4 s
    assert f16.total_s == pytest.approx(make + 64 + 10 * 4)
    assert by["cache int8"].total_s == pytest.approx(make + 32 + 10 * 2)
    fly = by["train on the fly"]
    assert fly.epoch_s == pytest.approx(800 / 320) and fly.total_s == pytest.approx(25.0)
    assert plan.cheapest == "train on the fly"  # 25 s against 72 s for int8: 10 epochs do not pay
    assert estimate(Workload(100, 64, 8, 200, w.bytes_per_frame), p).cheapest == "cache int8"  # 200 do
    # a CLS-only store is the cheapest, but it cannot serve a head that reads tokens
    many = Workload(100, 64, 8, 1000, w.bytes_per_frame)
    assert estimate(many, p, tokens_needed=False).cheapest == "cache CLS only"
    assert estimate(many, p, tokens_needed=True).cheapest == "cache int8"


def test_bytes_per_frame_follow_the_store_rule() -> None:
    shapes = {"b11.tokens": (197, 768), "final.cls": (512,)}
    assert bytes_per_frame(shapes, "float16") == (197 * 768 + 512) * 2
    assert bytes_per_frame(shapes, "int8") == 197 * 768 + 197 * 2 + 512 + 2  # + a float16 scale per token


def test_the_command_probes_and_prints_the_table(direction_videos: Path, tmp_path: Path, capsys) -> None:
    args = ["plan", "configs/extract/tiny.yaml", f"source={direction_videos / 'labels.csv'}",
            f"store.path={tmp_path / 's.zarr'}", "--epochs", "5", "--probe-videos", "2",
            "--disk-mb", "8"]  # fmt: skip
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "| cache float16 |" in out and "| train on the fly |" in out and "cheapest for 5 epochs:" in out
    assert "12 videos x 16 stored frames" in out  # tiny.yaml: two 8-frame views per video
    assert not (tmp_path / "s.zarr").exists()  # planning writes nothing but its temp probe file
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="--epochs"):
        cli([*args[:4], "--epochs", "0"])


def test_a_shared_cpu_bounds_extraction_by_both_loads_together() -> None:
    # 2 decode workers at 300 frames/s each (600 together) and a 2-thread model at 800 frames/s on 2 cores:
    # per frame 2/600 + 2/800 = 0.00583 CPU-s, so the cores do 2 / 0.00583 = 343 frames/s, not min(600, 800)
    w = Workload(videos=10, frames_per_video=343, clip_frames=8, epochs=1, bytes_per_frame={"cache int8": 1})
    gpu = Probes(1e9, 1e9, model_frames_per_s=800, decode_frames_per_s=600)
    cpu = Probes(1e9, 1e9, model_frames_per_s=800, decode_frames_per_s=600, cpu_cores=2, decode_workers=2,
                 model_threads=2)  # fmt: skip
    assert gpu.frames_per_s() == 600 and cpu.frames_per_s() == pytest.approx(2 / (2 / 600 + 2 / 800))
    extract = {o.name: o.extract_s for o in estimate(w, cpu).options}
    assert extract["cache int8"] == pytest.approx(3430 / (2 / (2 / 600 + 2 / 800)), rel=1e-6)
    # many cores: the overlap rule again
    assert Probes(1, 1, 800, 600, cpu_cores=64, decode_workers=2, model_threads=2).frames_per_s() == 600
