"""``sddr pipeline pointcloud``: metric, coloured point clouds of every input image, as
Parquet point shards; ``sddr pipeline merge``: downsampled PLY files from them.

Input: images with per-image cameras (:mod:`.inputs` with ``cameras=True``): a COLMAP
workspace, a nerfstudio ``transforms.json``, Parquet rows with camera columns, or a
dataset with intrinsics (the ``rgbd_sequence`` layout: PrimeSense K, Redwood poses).
Each image is refined, made metric (``scale_points``, its SfM points, or a metric
predictor; see :class:`~.stage.PointCloudStage`), unprojected with the confidence and
voxel filters and, when it has a pose, moved to the world frame. Output: ``OUTPUT/shards``
(``points`` shards, :data:`~sddr_pipeline.shards.schema.POINT_SCHEMA`: one row per
point), ``OUTPUT/errors`` (one row per failed image), ``OUTPUT/manifest.json``; exactly
once and resumable as every shard job (:mod:`.runner`).
"""
from __future__ import annotations

import json
import posixpath
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sddr_pipeline.io.names import check_name
from sddr_pipeline.shards.io import filesystem, join, publish_bytes, unstrip
from sddr_pipeline.shards.layout import LayoutError, OutputLayout, completed_shards
from sddr_pipeline.shards.schema import KIND_POINTS

from .config import MERGE_GROUPS, PointCloudPipelineConfig, load_config
from .runner import Job, PipelineReport, Progress, run_job, stderr_progress
from .stage import PointCloudStage

#: The settings of a point-cloud job that its stage takes (and a resume must keep).
STAGE_SETTINGS: tuple[str, ...] = ("mode", "steps", "range_clamp", "window_median", "scale_points", "min_sfm_points", "max_scale_error",
                                   "min_confidence", "voxel", "depth_max", "stride")
ALL_NAME = "scene"


def pointcloud_job(config: PointCloudPipelineConfig) -> Job:
    """The point-cloud job of a config: its actor class and the settings a resume must keep."""
    kwargs = {key: getattr(config, key) for key in STAGE_SETTINGS}
    identity = {"predictor": config.predictor, "weights": config.weights, "low_res": config.low_res,
                "high_res": config.high_res, **kwargs}
    if config.mode != "two-stage":
        identity["steps"] = None
    if config.mode != "two-stage" or config.window_median is None:  # outputs made before it existed still resume
        del identity["window_median"]
    return Job(name="pointcloud", kind=KIND_POINTS, stage=PointCloudStage, stage_kwargs=kwargs, identity=identity,
               cameras=True)


def run_pointcloud(config: PointCloudPipelineConfig, progress: Progress | None = stderr_progress) -> PipelineReport:
    """Run (or resume) the point-cloud pipeline described by ``config``; with
    ``merge_ply`` also merge its shards into PLY files (``report.outputs["merge"]``)."""
    report = run_job(config, pointcloud_job(config), progress)
    if config.merge_ply:
        merged = merge_point_shards(config.output, config.merge_ply, voxel=config.merge_voxel, by=config.merge_by,
                                    tile_size=config.tile_size, storage_options=config.storage_options)
        report.outputs["merge"] = asdict(merged)
    return report


def run_pointcloud_pipeline(
    input: str,
    output: str,
    predictor: str,
    weights: str | None = None,
    *,
    scale_points: int | None = None,
    voxel: float | None = None,
    min_confidence: float | None = None,
    config: str | Path | None = None,
    progress: Progress | None = stderr_progress,
    **settings: Any,
) -> PipelineReport:
    """Point shards of every image of ``input`` under ``output`` with Ray.

    Settings as in :func:`~sddr_pipeline.pipelines.refine.run_refine_pipeline`, plus the
    :class:`PointCloudPipelineConfig` fields (``scale_points``, ``voxel``,
    ``min_confidence``, ``merge_ply``, ...); None values are ignored (so ``voxel=None``
    keeps the default: set ``voxel`` in a config file to null to switch it off)."""
    overrides = {"input": input, "output": output, "predictor": predictor, "weights": weights,
                 "scale_points": scale_points, "voxel": voxel, "min_confidence": min_confidence, **settings}
    return run_pointcloud(load_config(PointCloudPipelineConfig, config, overrides), progress)


# ------------------------------------------------------------------------ merge


@dataclass
class MergeReport:
    """What :func:`merge_point_shards` wrote: ``files`` maps each PLY's name (relative to
    ``output``) to its number of points."""

    source: str
    output: str
    by: str
    voxel: float | None
    tile_size: float | None
    points_in: int = 0
    files: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def group_names(image_ids: np.ndarray, points: np.ndarray, by: str, tile_size: float | None) -> np.ndarray:
    """The PLY (without ``.ply``) each point goes to (pure): ``all``: :data:`ALL_NAME`;
    ``folder``: the folder part of its image id (``scene7/im0`` -> ``scene7``; ids
    without one: :data:`ALL_NAME`); ``tile``: ``tile_I_J_K``, the ``tile_size`` cube
    ``floor(p / tile_size)`` it lies in."""
    n = len(points)
    if by == "all":
        return np.full(n, ALL_NAME, dtype=object)
    if by == "folder":
        folders = {i: posixpath.dirname(i) or ALL_NAME for i in set(image_ids.tolist())}
        return np.array([folders[i] for i in image_ids.tolist()], dtype=object)
    if by == "tile":
        if not tile_size or tile_size <= 0:
            raise ValueError("merging by tile needs a positive tile_size")
        cells = np.floor(np.asarray(points, dtype=np.float64) / tile_size).astype(np.int64)
        return np.array([f"tile_{a}_{b}_{c}" for a, b, c in cells.tolist()], dtype=object)
    raise ValueError(f"by must be one of {', '.join(MERGE_GROUPS)}, got {by!r}")


def merge_point_shards(output: str, dest: str, *, voxel: float | None = None, by: str = "all",
                       tile_size: float | None = None, storage_options: Mapping[str, Any] | None = None,
                       progress: Progress | None = None) -> MergeReport:
    """One PLY per scene (``by="all"``: the whole output; ``"folder"``: per id folder) or
    per spatial tile (``"tile"``, cubes of ``tile_size`` world units) from the completed
    point shards of ``output``, downsampled to ``voxel`` (None: the job's own voxel),
    written with Open3D as binary PLY to ``dest/<name>.ply`` (any fsspec URI; each file
    published whole), plus ``dest/merge.json`` (this report).

    Shards are read one at a time: each group keeps its points downsampled per shard and
    again after merging, so memory holds one shard and the downsampled groups."""
    import pyarrow.parquet as pq

    from sddr_pipeline.geometry.pointcloud import PointCloud, merge_clouds, voxel_downsample, write_ply

    t0 = time.perf_counter()
    layout = OutputLayout(output, storage_options)
    manifest, shards = completed_shards(layout)
    if manifest.get("kind") != KIND_POINTS:
        raise LayoutError(f"{output} holds {manifest.get('kind')!r} shards, not point shards")
    if by not in MERGE_GROUPS:
        raise ValueError(f"by must be one of {', '.join(MERGE_GROUPS)}, got {by!r}")
    voxel = voxel if voxel is not None else (manifest.get("identity") or {}).get("voxel")
    report = MergeReport(layout.uri, dest, by, voxel, tile_size)
    groups: dict[str, PointCloud] = {}
    for path in shards:
        table = pq.read_table(path, filesystem=layout.fs)
        points = np.stack([table.column(c).to_numpy() for c in ("x", "y", "z")], axis=1)
        colors = np.stack([table.column(c).to_numpy() for c in ("r", "g", "b")], axis=1)
        conf = table.column("confidence").to_numpy()
        names = group_names(table.column("image_id").to_numpy(zero_copy_only=False), points, by, tile_size)
        report.points_in += len(points)
        for name in sorted(set(names.tolist())):
            m = names == name
            cloud = PointCloud(points[m], colors[m], confidence=conf[m])
            if name in groups:
                cloud = merge_clouds([groups[name], cloud])
            groups[name] = voxel_downsample(cloud, voxel) if voxel else cloud
        if progress:
            progress(f"sddr pipeline merge: read {unstrip(layout.fs, path)} ({len(points)} points)")
    fs, root = filesystem(dest, storage_options)
    with tempfile.TemporaryDirectory(prefix="sddr-merge-") as tmp:
        for name, cloud in sorted(groups.items()):
            rel = check_name(f"{name}.ply", f"{output}: merged group", "PLY name")
            local = write_ply(Path(tmp) / "cloud.ply", cloud)
            publish_bytes(fs, join(root, rel), local.read_bytes())
            report.files[rel] = len(cloud)
    report.seconds = round(time.perf_counter() - t0, 3)
    publish_bytes(fs, join(root, "merge.json"), (json.dumps(asdict(report), indent=2) + "\n").encode())
    return report


# --------------------------------------------------------------------- accuracy


def point_accuracy(output: str, dataset: str | Path, *, layout: str = "auto",
                   storage_options: Mapping[str, Any] | None = None, cover_m: float = 0.02) -> dict[str, Any]:
    """Distances of the points of a point-cloud output to the points unprojected from the
    EXACT depth of the dataset it was made from (e.g. ``rgbd_sequence_sample``).

    The shards are read with plain pyarrow (``OUTPUT/shards/*.parquet``). For each image
    the reference cloud is every valid pixel of its ground-truth depth, unprojected with
    its intrinsics and pose (no confidence or voxel filter); each output point's distance
    is to the nearest reference point of ITS image (metres). Returns the median, 90th
    percentile and mean over all points, the same per image, and the points per image
    next to its valid ground-truth pixels, and ``coverage``: the share of reference
    points within ``cover_m`` (2 cm) of an output point of the same image (what the
    confidence filter and failures leave out)."""
    import pyarrow.parquet as pq

    from sddr_pipeline.data import open_dataset
    from sddr_pipeline.geometry.intrinsics import intrinsics_from_sample
    from sddr_pipeline.geometry.pointcloud import depth_to_pointcloud, nearest_distances

    fs, root = filesystem(output, storage_options)
    table = pq.read_table(join(root, "shards"), filesystem=fs)
    ids = table.column("image_id").to_numpy(zero_copy_only=False)
    xyz = np.stack([table.column(c).to_numpy() for c in ("x", "y", "z")], axis=1)
    samples = {s.name: s for s in open_dataset(dataset, layout=layout)}
    per_image: dict[str, dict[str, float]] = {}
    pooled, covered, total = [], 0, 0
    for image_id in sorted(set(ids.tolist())):
        sample = samples.get(image_id)
        if sample is None or sample.gt is None or sample.gt_kind != "depth":
            raise ValueError(f"{dataset}: no exact depth for image {image_id!r} of {output}")
        pose = sample.meta.get("pose")
        reference = depth_to_pointcloud(sample.gt, intrinsics_from_sample(sample), camera_to_world=pose).points
        mine = xyz[ids == image_id]
        d = nearest_distances(mine, reference)
        near = int((nearest_distances(reference, mine) <= cover_m).sum())
        pooled.append(d)
        covered, total = covered + near, total + len(reference)
        per_image[image_id] = {"points": int(len(d)), "reference_points": int(len(reference)),
                               "median_m": float(np.median(d)), "p90_m": float(np.percentile(d, 90)),
                               "coverage": near / len(reference)}
    if not pooled:
        raise ValueError(f"{output} holds no points")
    d = np.concatenate(pooled)
    return {"points": int(len(d)), "images": len(per_image), "median_m": float(np.median(d)),
            "p90_m": float(np.percentile(d, 90)), "mean_m": float(np.mean(d)), "cover_m": cover_m,
            "coverage": covered / total, "per_image": per_image}
