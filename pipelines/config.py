"""Pipeline settings: plain dataclasses, loaded from YAML and validated with clear errors.

A YAML file holds the fields of :class:`RefinePipelineConfig`,
:class:`PseudoLabelPipelineConfig` or :class:`PointCloudPipelineConfig` at the top level and Ray's under ``ray:`` (see
``pipelines/configs/*.yaml``). Every error names the key. ``None`` resource settings are
chosen from the Ray cluster when the job starts (:mod:`.resources`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from sddr_pipeline.inference.options import MODES, check_range_clamp, two_stage_config
from sddr_pipeline.io.mappings import check_keys, field_names

from .inputs import INPUT_KINDS

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
MERGE_GROUPS: tuple[str, ...] = ("all", "folder", "tile")

C = TypeVar("C", bound="PipelineConfig")


class ConfigError(ValueError):
    """A pipeline setting is invalid; the message names it."""


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class RayConfig:
    """How to reach Ray. ``address`` None takes the ``RAY_ADDRESS`` environment variable
    (Ray's own convention) when it is set, else starts a private local cluster for the run
    (and shuts it down after) unless Ray is already initialised in the process;
    ``num_cpus``/``num_gpus``/``object_store_memory`` (bytes) size that local cluster and
    are refused together with an address."""

    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    object_store_memory: int | None = None
    progress_bars: bool = False

    def __post_init__(self) -> None:
        if self.address is None:
            self.address = os.environ.get("RAY_ADDRESS") or None

    def validate(self) -> None:
        _check(self.address is None or isinstance(self.address, str), "ray.address", "must be a string")
        for key in ("num_cpus", "num_gpus"):
            v = getattr(self, key)
            _check(v is None or (_is_number(v) and v >= 0), f"ray.{key}", f"must be a non-negative number, got {v!r}")
        v = self.object_store_memory
        _check(v is None or (_is_int(v) and v >= 75 * 2**20), "ray.object_store_memory",
               f"must be an integer number of bytes >= 78643200 (75 MiB), got {v!r}")
        _check(isinstance(self.progress_bars, bool), "ray.progress_bars", "must be true or false")
        for key in ("num_cpus", "num_gpus", "object_store_memory"):
            _check(self.address is None or getattr(self, key) is None, f"ray.{key}",
                   f"sizes the local cluster started when no address is given; the cluster at {self.address}"
                   f"{' (RAY_ADDRESS)' if self.address == os.environ.get('RAY_ADDRESS') else ''} "
                   "has its own resources: leave it out or drop the address")


@dataclass
class PipelineConfig:
    """Settings every pipeline shares.

    Inputs and outputs: ``input``/``output`` URIs, ``input_kind`` and dataset ``layout``
    (see :mod:`.inputs`), ``storage_options`` for fsspec (both sides), ``rows_per_shard``
    (also the unit of work: a read task fetches a whole shard's inputs and one actor
    makes and writes the whole shard, so a worker holds about one shard's rows).
    Models: ``predictor`` spec, refiner ``weights``, ``low_res``/``high_res``, ``device``
    inside the actors (``auto``: CUDA when torch sees it, else CPU).
    Resources: ``actors`` (None: one per GPU, or one per free CPU), ``gpus_per_actor``
    (None: 1 when the cluster has GPUs, else 0; fractions share a GPU), ``cpus_per_actor``
    (None: what is left after ``read_cpus``, at most 1), ``read_cpus`` per read task,
    ``torch_threads`` per actor (None: its whole CPUs, at least 1), ``batch_size`` images per
    model call. Robustness: ``max_failed_share`` of inputs that may fail before the job
    fails, ``io_retry_timeout_s`` spent at most retrying one storage operation through
    transient errors (an object-store outage shorter than that costs no work), optionally
    also capped at ``io_attempts`` tries, ``stall_timeout_s`` without any result
    before the job is stopped (None: wait forever), ``progress_interval_s``.
    """

    input: str = ""
    output: str = ""
    predictor: str = ""
    weights: str = "default"
    input_kind: str = "auto"
    layout: str = "auto"
    low_res: int | None = None
    high_res: int | None = None
    device: str = "auto"
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    read_cpus: float = 0.25
    torch_threads: int | None = None
    batch_size: int = 4
    rows_per_shard: int = 256
    include_image: bool = False
    max_failed_share: float = 0.1
    io_attempts: int | None = None
    io_retry_timeout_s: float = 120.0
    stall_timeout_s: float | None = 1800.0
    progress_interval_s: float = 10.0
    storage_options: dict[str, Any] = field(default_factory=dict)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        for key in ("input", "output", "predictor", "weights"):
            v = getattr(self, key)
            _check(isinstance(v, str) and bool(v.strip()), key, f"is required (a non-empty string), got {v!r}")
        _check(self.input_kind in INPUT_KINDS, "input_kind", f"must be one of {', '.join(INPUT_KINDS)}, got {self.input_kind!r}")
        _check(isinstance(self.layout, str), "layout", "must be a string")
        for key in ("low_res", "high_res", "actors", "torch_threads"):
            v = getattr(self, key)
            _check(v is None or (_is_int(v) and v > 0), key, f"must be a positive integer, got {v!r}")
        if self.low_res and self.high_res:
            _check(self.low_res <= self.high_res, "low_res", f"({self.low_res}) must not exceed high_res ({self.high_res})")
        _check(self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        v = self.gpus_per_actor
        _check(v is None or (_is_number(v) and 0 <= v), "gpus_per_actor", f"must be a non-negative number, got {v!r}")
        _check(v is None or v <= 1 or float(v).is_integer(), "gpus_per_actor", f"above 1 must be a whole number, got {v!r}")
        v = self.cpus_per_actor
        _check(v is None or (_is_number(v) and v > 0), "cpus_per_actor", f"must be a positive number, got {v!r}")
        _check(_is_number(self.read_cpus) and self.read_cpus > 0, "read_cpus", f"must be a positive number, got {self.read_cpus!r}")
        for key in ("batch_size", "rows_per_shard"):
            v = getattr(self, key)
            _check(_is_int(v) and v > 0, key, f"must be a positive integer, got {v!r}")
        v = self.io_attempts
        _check(v is None or (_is_int(v) and v > 0), "io_attempts", f"must be a positive integer or null, got {v!r}")
        v = self.io_retry_timeout_s
        _check(_is_number(v) and v >= 0, "io_retry_timeout_s", f"must be a non-negative number of seconds, got {v!r}")
        _check(isinstance(self.include_image, bool), "include_image", "must be true or false")
        _check(_is_number(self.max_failed_share) and 0 <= self.max_failed_share <= 1, "max_failed_share",
               f"must be a number in [0, 1], got {self.max_failed_share!r}")
        v = self.stall_timeout_s
        _check(v is None or (_is_number(v) and v > 0), "stall_timeout_s", f"must be a positive number of seconds or null, got {v!r}")
        _check(_is_number(self.progress_interval_s) and self.progress_interval_s >= 0, "progress_interval_s",
               f"must be a non-negative number, got {self.progress_interval_s!r}")
        _check(isinstance(self.storage_options, dict), "storage_options", "must be a mapping")
        self.ray.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """The settings as recorded in manifests and file metadata (no storage secrets)."""
        out = self.to_dict()
        out["storage_options"] = sorted(self.storage_options)
        return out


@dataclass
class RefinePipelineConfig(PipelineConfig):
    """:class:`PipelineConfig` plus refinement: ``mode`` (one-stage|two-stage), ``steps``
    (two-stage), ``save_predictions`` (keep raw low/high in the shards), ``confidence``
    (fill the shards' per-pixel ``confidence`` column), ``range_clamp`` (the local-range
    clamp, a fraction of the long side; 0 = raw network output; None = the refiner's own,
    :class:`sddr_pipeline.inference.RefineOptions`), ``window_median`` (two-stage: the
    windows' texture median, odd, 1 = off; None = :class:`~sddr_pipeline.inference.TwoStageConfig`'s)."""

    mode: str = "one-stage"
    steps: int = 2
    save_predictions: bool = False
    confidence: bool = False
    range_clamp: float | None = None
    window_median: int | None = None

    def validate(self) -> None:
        super().validate()
        _check_refinement(self)
        _check(isinstance(self.save_predictions, bool), "save_predictions", "must be true or false")
        _check(isinstance(self.confidence, bool), "confidence", "must be true or false")


def _check_refinement(config: Any) -> None:
    """``mode``, ``steps``, ``range_clamp`` and ``window_median`` of a config that refines."""
    _check(config.mode in MODES, "mode", f"must be one of {', '.join(MODES)}, got {config.mode!r}")
    _check(_is_int(config.steps) and config.steps > 0, "steps", f"must be a positive integer, got {config.steps!r}")
    if config.range_clamp is not None:
        try:
            ok = isinstance(config.range_clamp, (int, float)) and check_range_clamp(config.range_clamp) >= 0
        except ValueError:
            ok = False
        _check(ok, "range_clamp",
               f"must be a number in [0, 0.25] (a fraction of the long side; 0 disables it), got {config.range_clamp!r}")
    if config.window_median is not None:
        try:
            two_stage_config(window_median=config.window_median)
        except (TypeError, ValueError):
            _check(False, "window_median", f"must be an odd integer between 1 and 15 (1 = off), got {config.window_median!r}")


@dataclass
class PseudoLabelPipelineConfig(PipelineConfig):
    """:class:`PipelineConfig` plus self-distillation labels: coarse-to-fine ``steps`` (S
    of G_S), k-means ``seed``, the ``top`` share of G_S kept as edges and the number of
    ``regions``. Images are kept in the shards (``include_image``) by default."""

    steps: int = 2
    seed: int = 0
    top: float = 0.05
    regions: int = 8
    include_image: bool = True

    def validate(self) -> None:
        super().validate()
        _check(_is_int(self.steps) and self.steps > 0, "steps", f"must be a positive integer, got {self.steps!r}")
        _check(_is_int(self.seed), "seed", f"must be an integer, got {self.seed!r}")
        _check(_is_number(self.top) and 0 < self.top < 1, "top", f"must be a number in (0, 1), got {self.top!r}")
        _check(_is_int(self.regions) and 1 <= self.regions <= 255, "regions", f"must be an integer in [1, 255], got {self.regions!r}")


@dataclass
class PointCloudPipelineConfig(PipelineConfig):
    """:class:`PipelineConfig` plus point clouds (``sddr pipeline pointcloud``).

    Refinement: ``mode``, ``steps``, ``range_clamp``, ``window_median`` as :class:`RefinePipelineConfig`.
    Metric scale, in this order: ``scale_points`` (N random pixels of each image's own
    depth map: RGB-D, LiDAR; at least 3), else the image's SfM points (at least
    ``min_sfm_points``), else a metric predictor; a fit whose median relative error at
    those points exceeds ``max_scale_error`` (null: never) fails the image. Unprojection:
    pixels with confidence below ``min_confidence`` (null: keep all) or farther than
    ``depth_max`` are dropped, ``stride`` keeps every N-th row and column, ``voxel``
    (world units, metres for metric scale; null: off) keeps one averaged point per cube.
    ``merge_ply``: after the job, write downsampled PLY files there
    (:func:`~.pointcloud.merge_point_shards`, ``merge_voxel``, ``merge_by``: ``all``,
    ``folder`` or ``tile`` cubes of ``tile_size``)."""

    mode: str = "one-stage"
    steps: int = 2
    range_clamp: float | None = None
    window_median: int | None = None
    scale_points: int | None = None
    min_sfm_points: int = 10
    max_scale_error: float | None = 0.2
    min_confidence: float | None = 0.3
    voxel: float | None = 0.01
    depth_max: float | None = None
    stride: int = 1
    rows_per_shard: int = 32
    merge_ply: str | None = None
    merge_voxel: float | None = None
    merge_by: str = "all"
    tile_size: float | None = None

    def validate(self) -> None:
        super().validate()
        _check_refinement(self)
        for key in ("min_sfm_points", "stride"):
            v = getattr(self, key)
            _check(_is_int(v) and v > 0, key, f"must be a positive integer, got {v!r}")
        v = self.scale_points
        _check(v is None or (_is_int(v) and v >= 3), "scale_points", f"must be an integer of at least 3 or null, got {v!r}")
        v = self.min_confidence
        _check(v is None or (_is_number(v) and 0 <= v <= 1), "min_confidence", f"must be a number in [0, 1] or null, got {v!r}")
        for key in ("max_scale_error", "voxel", "depth_max", "merge_voxel", "tile_size"):
            v = getattr(self, key)
            _check(v is None or (_is_number(v) and v > 0), key, f"must be a positive number or null, got {v!r}")
        _check(self.merge_ply is None or (isinstance(self.merge_ply, str) and bool(self.merge_ply.strip())), "merge_ply",
               f"must be an output URI or null, got {self.merge_ply!r}")
        _check(self.merge_by in MERGE_GROUPS, "merge_by", f"must be one of {', '.join(MERGE_GROUPS)}, got {self.merge_by!r}")
        _check(self.merge_by != "tile" or self.tile_size is not None, "tile_size", "is required when merge_by is 'tile'")


def build_config(cls: type[C], values: Mapping[str, Any]) -> C:
    """``cls`` from a mapping (YAML content plus overrides), with unknown keys refused."""
    kwargs = check_keys(values, field_names(cls), what="pipeline config", noun="setting", error=ConfigError)
    ray_values = kwargs.pop("ray", None) or {}
    if isinstance(ray_values, RayConfig):
        ray_cfg = ray_values
    else:
        ray_cfg = RayConfig(**check_keys(ray_values, field_names(RayConfig), what="pipeline config", where="ray",
                                         noun="setting", error=ConfigError))
    for key in ("gpus_per_actor", "cpus_per_actor", "read_cpus", "max_failed_share", "stall_timeout_s", "top",
                "io_retry_timeout_s", "max_scale_error", "min_confidence", "voxel", "depth_max", "merge_voxel",
                "tile_size"):
        if _is_int(kwargs.get(key)):
            kwargs[key] = float(kwargs[key])
    config = cls(**kwargs, ray=ray_cfg)
    config.validate()
    return config


def load_config(cls: type[C], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> C:
    """Read a YAML config (optional) and apply ``overrides`` (None values are ignored)."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: must hold a mapping of settings")
        values.update(loaded)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "ray" and isinstance(value, Mapping):
            values["ray"] = {**(values.get("ray") or {}), **{k: v for k, v in value.items() if v is not None}}
        else:
            values[key] = value
    return build_config(cls, values)


def configs_dir() -> Path:
    """Folder of the bundled example configs (``refine.yaml``, ``pseudolabel.yaml``)."""
    return Path(__file__).resolve().parent / "configs"
