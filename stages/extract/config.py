"""Typed config of stage one (``python -m stages.extract CONFIG key=value ...``).

Every field has a default except ``source`` and ``store.path``; each default says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class BackboneConfig:
    name: str = (
        "test_openclip_vit"  # a registry name (`twostage --list-backbones`), or open_clip:ARCH / timm:NAME
    )
    pretrained: str | None = None  # open_clip pretrained tag / timm tag; None = the entry's own default
    weights_file: str | None = (
        None  # local .pt/.bin/.safetensors, or an e2e checkpoint (its fine-tuned backbone); sha256 recorded
    )
    random_init: bool = False  # allow a backbone without weights (its features are noise): off = refused
    device: str = "auto"  # auto = cuda when available, else cpu
    batch_frames: int = 64  # frames per device batch, packed across videos: large enough to fill a GPU
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU, where fp32 is faster and exact)
    fp16: bool = False  # float16 autocast on CUDA in place of bf16 (T4/V100 lack bf16); ignored on CPU

    def __post_init__(self) -> None:
        if self.batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {self.batch_frames}")


@dataclass
class SamplingConfig:
    mode: Literal["clips", "dense"] = "clips"  # clips: T x stride views; dense: every frame at target_fps
    frames: int = 8  # T, frames per clip (clips mode)
    stride: int = 2  # source frames between sampled frames (clips mode)
    temporal_views: int = 1  # clip positions per video (test: spread evenly; train: random)
    spatial_views: int = 1  # crops per clip position: 1 = centre, 3 = the usual left/centre/right
    split: Literal["test", "train"] = "test"  # train = seeded random clip start and crop per view
    target_fps: float | None = None  # dense mode: resample to this rate; None keeps the native rate
    max_frames: int | None = None  # dense mode: cap per video (None = no cap)
    short_side: int | None = None  # resize the short side to this before cropping; None = backbone input size

    def __post_init__(self) -> None:
        for name in ("frames", "stride", "temporal_views", "spatial_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.spatial_views not in (1, 3):
            raise ValueError(f"spatial_views must be 1 or 3, got {self.spatial_views}")
        if self.target_fps is not None and not self.target_fps > 0:
            raise ValueError(f"target_fps={self.target_fps}: expected frames per second > 0, or null")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames={self.max_frames}: expected >= 1, or null")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"short_side={self.short_side}: expected pixels >= 1, or null")


@dataclass
class StoreConfig:
    path: str = ""  # where the Zarr store is written (a folder; created if missing)
    dtype: Literal["float16", "int8"] = "float16"  # float16 keeps fp16/bf16 activations; int8 halves bytes
    compression: Literal["zstd", "lz4", "none"] = "lz4"  # blosc lz4: fast; zstd packs tighter, writes slower
    shard_mb: float = 64.0  # target shard size: the unit of writing (fewer, larger files on cluster disks)
    chunk_crc: bool = (
        False  # crc32c per chunk: damaged bytes fail the read itself (verify catches them anyway)
    )
    overwrite: bool = False  # delete a store made with another config and start anew
    commit_interval_s: float = 30.0  # at most this much finished work is lost if the run is killed

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path is required: the folder of the feature store (e.g. runs/feats.zarr)")
        if not self.shard_mb > 0:  # also rejects NaN
            raise ValueError(
                f"shard_mb={self.shard_mb}: expected MB per shard > 0 (64 suits local disks, 256+ cluster "
                "file systems)"
            )
        if not self.commit_interval_s >= 0:
            raise ValueError(f"commit_interval_s={self.commit_interval_s}: expected seconds >= 0")


@dataclass
class RunConfig:
    decode_workers: int = 2  # decoding processes; decode is the usual bottleneck, so one per spare core
    decoder: Literal["auto", "decord", "pyav"] = "auto"  # auto = decord, PyAV when decord fails on a file
    max_failure_fraction: float = 0.05  # exit non-zero when more than this fraction of videos failed
    fail_fast: bool = False  # stop at the first bad video and raise (debugging)
    seed: int = 0  # seeds train-view crops and clip positions
    progress: bool = True  # a progress bar on stderr
    part: str | None = None  # "I/N": process only part I of N (plain job arrays); see `twostage commit`
    limit: int | None = None  # process at most this many videos (smoke tests)
    video_timeout_s: float = (
        600.0  # a decoder stuck this long on one video is killed; the video is recorded failed
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_failure_fraction <= 1.0:  # also rejects NaN
            raise ValueError(
                f"max_failure_fraction={self.max_failure_fraction}: expected a fraction in [0, 1] "
                "(0.05 = fail the run when more than 5% of its videos failed)"
            )
        if self.decode_workers < 1 or not self.video_timeout_s > 0:
            raise ValueError(
                f"need decode_workers >= 1 and video_timeout_s > 0, got {self.decode_workers}, "
                f"{self.video_timeout_s}"
            )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit}: expected a number of videos >= 1, or null")


@dataclass
class ClusterConfig:
    kind: Literal["none", "local", "address", "slurm", "pbs"] = "none"  # none = this process only
    workers: int | None = None  # local/slurm/pbs: worker processes (local default: GPUs, else cores // 2)
    address: str | None = None  # kind=address: the scheduler of an existing dask cluster (tcp://host:8786)
    parts: int | None = None  # parts of the work, one task each (default 4 x workers, >= 16 videos per part)
    retries: int = 2  # times a failed task is retried on another worker
    jobqueue: dict[str, str | int | float | list[str]] = field(
        default_factory=dict
    )  # SLURMCluster/PBSCluster kwargs


@dataclass
class ExtractConfig:
    source: str = ""  # csv/jsonl list, class-per-folder tree, or webdataset shards (path/shard-{0..9}.tar)
    store: StoreConfig = field(default_factory=lambda: StoreConfig(path="runs/features.zarr"))
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    tensors: list[str] = field(
        default_factory=lambda: ["final.cls"]
    )  # "{layer}.{kind}", layer b-1 = last block
    pool: int = 4  # grid p of "pooled" tensors (p x p cells)
    classes: list[str] | None = (
        None  # fixed class order; None = from classes.txt next to the list, else sorted
    )
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("source is required: a csv/jsonl list, a class-per-folder tree, or tar shards")
        if not self.tensors:
            raise ValueError("tensors is empty: name at least one, e.g. final.cls or b-1.tokens")
        if self.pool < 1:
            raise ValueError(f"pool={self.pool}: expected a grid side >= 1 (pooled tensors are pool x pool)")
