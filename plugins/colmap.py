"""COLMAP integration: SDDR depth for every registered image, scaled to the SfM points.

``run_colmap(WORKSPACE, predictor, refiner)`` reads ``WORKSPACE/sparse/0`` with pycolmap
(``pip install pycolmap==4.2.1``), undistorts the images when a camera is not
SIMPLE_PINHOLE/PINHOLE (``pycolmap.undistort_images``, COLMAP's own undistorter: it
handles every COLMAP model, the simple radial ones included, and crops to the valid
region), refines each registered image, and aligns the refined map to the SfM points the
image observes:

* observations are kept when their 3-D point has a track of at least
  ``min_track_length`` images, a mean reprojection error and a reprojection error in
  THIS image of at most ``max_reproj_error`` px, and lies in front of the camera;
* a robust (Huber IRLS) scale and shift is fitted in inverse depth (``space="inverse"``,
  default; as 3DGS ``make_depth_scale``: ``1/z = a * n + b`` with ``n`` the refined
  disparity-like map) or in depth (``space="depth"``: ``z = a * d + b``, ``d`` the refined
  map in depth polarity; meant for depth-space predictors);
* an image is EXCLUDED (no depth written, scale 0 in ``depth_params.json``, listed with
  the reason in ``alignment.json``) when it has fewer than ``min_points`` usable
  observations, a non-positive scale, a median relative error at its points above
  ``max_median_error``, or a scale that is an outlier across images: outside
  ``scale_bounds`` (0.2-5x) of the median scale (``outlier_rule="ratio"``, 3DGS's rule) or
  more than ``mad_k`` scaled MADs from the median log-scale (``outlier_rule="mad"``).

OUTPUT (a new folder, ``WORKSPACE/sddr`` by default; COLMAP's own files are never written)::

    images/                         undistorted images (or links to WORKSPACE/images)
    sparse/0/{cameras,images,points3D}.bin   the (undistorted) model
    sparse/0/depth_params.json      3DGS convention {stem: {scale, offset}}:
                                    inverse depth = png / 2**16 * scale + offset
    depths/<stem>.png               16-bit inverse depth for 3DGS (``-d depths``)
    stereo/depth_maps/<name>.geometric.bin   COLMAP depth maps (SfM units; 0 = none)
    confidence/<stem>.npy           per-pixel confidence in [0, 1] (sddr_pipeline.confidence)
    alignment.json                  per-image fit, residuals, status and reasons
    fused.ply                       coloured points of all included maps, world frame

Depth is in the reconstruction's units (metric only if the SfM model is).

``GroundTruthDepth(DIR)`` (``sddr colmap --gt-depth DIR``) is a ``context_fn`` handing each
image its ground-truth depth, for the ``simulated`` predictor and benchmarks only (e.g. the
``gt_depth/`` folder of ``sddr capture-sample``).
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Literal, Sequence

import numpy as np

from sddr_pipeline.geometry.cameras import (Observations, image_observations, require_pycolmap,
                                            usable_observations)
from sddr_pipeline.geometry.intrinsics import PINHOLE_MODELS, Intrinsics, intrinsics_from_colmap
from sddr_pipeline.io.atomic import atomic_write_bytes, atomic_write_json
from sddr_pipeline.io.names import check_name

Space = Literal["inverse", "depth"]


class ColmapError(RuntimeError):
    """The workspace or output folder cannot be used; the message says why."""


# ------------------------------------------------------------ COLMAP depth files


def write_colmap_depth(path: str | Path, depth: np.ndarray) -> None:
    """Write a COLMAP dense depth map: ASCII ``"W&H&1&"`` then little-endian float32,
    column-major over (W, H, C), i.e. row-major HxW for one channel. Atomic."""
    d = np.ascontiguousarray(depth, dtype="<f4")
    if d.ndim != 2:
        raise ValueError(f"depth must be 2-D, got {d.shape}")
    h, w = d.shape
    atomic_write_bytes(Path(path), f"{w}&{h}&1&".encode("ascii") + d.tobytes(order="C"))


def read_colmap_depth(path: str | Path) -> np.ndarray:
    """Read a COLMAP ``.bin`` depth/normal map as HxW (one channel) or HxWxC float32."""
    data = Path(path).read_bytes()
    fields, pos = [], 0
    for _ in range(3):
        end = data.index(b"&", pos)
        fields.append(int(data[pos:end]))
        pos = end + 1
    w, h, c = fields
    arr = np.frombuffer(data, dtype="<f4", offset=pos)
    if arr.size != w * h * c:
        raise ValueError(f"{path}: header says {w}x{h}x{c} but holds {arr.size} values")
    out = arr.reshape(c, h, w).transpose(1, 2, 0)
    return out[:, :, 0].copy() if c == 1 else out.copy()


def encode_inverse_depth_png(depth: np.ndarray) -> tuple[np.ndarray, float, float]:
    """3DGS depth image: uint16 ``png`` with ``1/depth = png / 2**16 * scale + offset``;
    offset 0, so invalid pixels (depth <= 0) are 0 (infinitely far). Returns (png,
    scale, offset); an all-invalid map gives zeros and scale 0."""
    d = np.asarray(depth, dtype=np.float64)
    inv = np.where(np.isfinite(d) & (d > 0), 1.0 / np.where(d > 0, d, 1.0), 0.0)
    top = float(inv.max()) if inv.size else 0.0
    if top <= 0:
        return np.zeros(d.shape, np.uint16), 0.0, 0.0
    png = np.clip(np.rint(inv / top * 65535.0), 0, 65535).astype(np.uint16)
    return png, top * 65536.0 / 65535.0, 0.0


def _png_bytes(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ sampling


def sample_bilinear(arr: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of a 2-D map at fractional (row, col) inside it (pure)."""
    a = np.asarray(arr, dtype=np.float64)
    h, w = a.shape
    r = np.clip(rows, 0, h - 1)
    c = np.clip(cols, 0, w - 1)
    r0 = np.minimum(np.floor(r).astype(int), h - 2) if h > 1 else np.zeros(len(r), int)
    c0 = np.minimum(np.floor(c).astype(int), w - 2) if w > 1 else np.zeros(len(c), int)
    fr, fc = r - r0, c - c0
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    top = a[r0, c0] * (1 - fc) + a[r0, c1] * fc
    bottom = a[r1, c0] * (1 - fc) + a[r1, c1] * fc
    return top * (1 - fr) + bottom * fr


# ------------------------------------------------------------------ alignment


@dataclass
class Alignment:
    """A fit of one refined map to its SfM points and how well the points agree."""

    space: str
    scale: float
    offset: float
    points: int
    median_rel_error: float
    mean_rel_error: float
    p90_rel_error: float
    inlier_fraction: float


def fit_alignment(src: np.ndarray, z: np.ndarray, space: Space) -> Alignment:
    """Robust scale/shift of map samples ``src`` to SfM depths ``z`` (pure).

    ``space="inverse"``: ``1/z ~ scale * src + offset``; ``"depth"``: ``z ~ scale * src +
    offset``. Relative errors are of the implied depth at the points; inliers are those
    within 10 %.
    """
    import torch

    from sddr_pipeline.inference.alignment import fit_sparse_depth

    s = np.asarray(src, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    a, b = fit_sparse_depth(torch.from_numpy(s), z, space)
    pred = apply_alignment(s, a, b, space)
    rel = np.where(pred > 0, np.abs(pred - z) / z, np.inf)
    finite = np.where(np.isfinite(rel), rel, 10.0)
    return Alignment(
        space=space, scale=float(a), offset=float(b), points=int(len(z)),
        median_rel_error=float(np.median(finite)), mean_rel_error=float(np.mean(finite)),
        p90_rel_error=float(np.percentile(finite, 90)), inlier_fraction=float(np.mean(rel < 0.1)),
    )


def apply_alignment(src: np.ndarray, scale: float, offset: float, space: str, max_depth: float | None = None) -> np.ndarray:
    """Depth from a map and its fit; pixels with no positive depth (or beyond
    ``max_depth``) are 0 (pure)."""
    v = scale * np.asarray(src, dtype=np.float64) + offset
    if space == "inverse":
        with np.errstate(divide="ignore"):
            d = np.where(v > 0, 1.0 / np.where(v > 0, v, 1.0), 0.0)
    else:
        d = np.where(v > 0, v, 0.0)
    if max_depth is not None:
        d = np.where(d <= max_depth, d, 0.0)
    return d


def flag_scale_outliers(
    scales: dict[str, float], rule: Literal["ratio", "mad"] = "ratio",
    bounds: tuple[float, float] = (0.2, 5.0), mad_k: float = 3.5,
) -> tuple[dict[str, str], float]:
    """Images whose scale is an outlier across the set (pure): ``{name: reason}`` and the
    median scale. ``ratio``: outside ``bounds`` times the median; ``mad``: more than
    ``mad_k`` scaled MADs (1.4826 MAD) from the median of log-scales."""
    positive = {k: v for k, v in scales.items() if v > 0 and math.isfinite(v)}
    if not positive:
        return {}, 0.0
    vals = np.array(list(positive.values()))
    med = float(np.median(vals))
    flagged = {}
    if rule == "ratio":
        lo, hi = bounds
        for k, v in positive.items():
            if not lo * med <= v <= hi * med:
                flagged[k] = f"scale_outlier: {v:.4g} is {v / med:.3g}x the median scale {med:.4g} (allowed {lo:g}-{hi:g}x)"
    elif rule == "mad":
        logs = np.log(vals)
        centre = float(np.median(logs))
        spread = 1.4826 * float(np.median(np.abs(logs - centre)))
        spread = max(spread, 0.05)  # identical scales must not make every tiny deviation an outlier
        for k, v in positive.items():
            dev = abs(math.log(v) - centre) / spread
            if dev > mad_k:
                flagged[k] = f"scale_outlier: log-scale {dev:.1f} MADs from the median (limit {mad_k:g})"
    else:
        raise ValueError(f"outlier rule must be 'ratio' or 'mad', got {rule!r}")
    return flagged, med


# -------------------------------------------------------------------- running


@dataclass
class ColmapView:
    """What a ``context_fn`` gets for one registered image (after undistortion)."""

    name: str
    image: np.ndarray
    intrinsics: Intrinsics
    cam_from_world: np.ndarray
    camera: Any


@dataclass
class ColmapReport:
    output: Path
    included: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    undistorted: bool = False
    median_scale: float = 0.0
    fused_points: int = 0
    seconds: float = 0.0


def _check_output(workspace: Path, output: Path) -> None:
    ws, out = workspace.resolve(), output.resolve()
    if out == ws:
        raise ColmapError(f"output {output} is the workspace itself; choose a new folder")
    for protected in ("images", "sparse", "stereo", "dense", "database.db"):
        p = (ws / protected).resolve()
        if out == p or p in out.parents:
            raise ColmapError(f"output {output} lies inside COLMAP's {protected} in {workspace}; choose a new folder")
    if out in ws.parents:
        raise ColmapError(f"output {output} contains the workspace; choose a new folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ColmapError(f"output {output} already exists and is not empty; choose a new folder")


def _stem(name: str) -> str:
    return str(PurePosixPath(check_name(name, "COLMAP model", "image name")).with_suffix(""))


def _model_names(rec: Any, where: str) -> dict[int, str]:
    """``{image id: name}`` of the registered images; every image's name is checked
    (:func:`~sddr_pipeline.io.names.check_name`): names become file names in OUTPUT."""
    names = {iid: check_name(rec.images[iid].name, f"{where}: image {iid}", "image name") for iid in sorted(rec.images)}
    return {iid: names[iid] for iid in rec.reg_image_ids()}


def _link_images(src: Path, dst: Path, names: Sequence[str]) -> str:
    """Expose the original images under OUTPUT/images: symbolic links, else copies where
    the file system has no links. Never replaces an existing file."""
    how = "symlink"
    for n in names:
        target = dst / check_name(n, str(dst), "image name")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink((src / n).resolve(), target)
        except FileExistsError:
            raise ColmapError(f"{target} already exists; image names must be unique") from None
        except OSError:
            shutil.copy2(src / n, target)
            how = "copy"
    return how


def _read_model(workspace: Path, image_dir: Path, pycolmap: Any) -> Any:
    """The reconstruction in WORKSPACE/sparse/0 (read only)."""
    sparse = workspace / "sparse" / "0"
    if not (sparse / "cameras.bin").is_file() and not (sparse / "cameras.txt").is_file():
        raise ColmapError(f"{workspace}: no COLMAP model in sparse/0 (cameras/images/points3D .bin or .txt)")
    if not image_dir.is_dir():
        raise ColmapError(f"{workspace}: no images/ folder")
    return pycolmap.Reconstruction(str(sparse))


def _prepare_model(rec: Any, sparse: Path, output: Path, image_dir: Path, pycolmap: Any) -> tuple[Any, Path, bool]:
    """Undistort ``rec`` (read from ``sparse``, names checked) into OUTPUT when needed,
    and write OUTPUT/sparse/0. Returns (reconstruction, folder of the images to refine,
    undistorted?)."""
    distorted = sorted({c.model.name for c in rec.cameras.values() if c.model.name not in PINHOLE_MODELS})
    out_sparse = output / "sparse" / "0"
    if distorted:
        tmp = output / ".undistort"
        pycolmap.undistort_images(str(tmp), str(sparse), str(image_dir))
        shutil.move(str(tmp / "images"), str(output / "images"))
        rec = pycolmap.Reconstruction(str(tmp / "sparse"))
        shutil.rmtree(tmp)
        out_sparse.mkdir(parents=True, exist_ok=True)
        rec.write(str(out_sparse))
        return rec, output / "images", True
    out_sparse.mkdir(parents=True, exist_ok=True)
    rec.write(str(out_sparse))
    return rec, image_dir, False


@dataclass(frozen=True)
class _FitRules:
    """How :func:`run_colmap` filters an image's SfM observations and judges its fit."""

    space: Space
    min_track_length: int
    max_reproj_error: float
    min_points: int
    max_median_error: float
    max_depth_factor: float


def _refine_image(
    rec: Any, iid: int, name: str, image_dir: Path, predictor: Any, refiner: Any,
    context_fn: Callable[[ColmapView], Any] | None, refine_options: dict[str, Any],
) -> Any:
    """Refine one registered image, checked against its camera's size, with the context
    ``context_fn`` gives it (a bare ``SampleContext`` without one)."""
    from sddr_pipeline.data import read_image
    from sddr_pipeline.inference import refine
    from sddr_pipeline.predictors.base import SampleContext

    image = rec.images[iid]
    camera = rec.cameras[image.camera_id]
    rgb = read_image(image_dir / name)
    if rgb.shape[:2] != (camera.height, camera.width):
        raise ColmapError(
            f"{image_dir / name} is {rgb.shape[1]}x{rgb.shape[0]} but its COLMAP camera is "
            f"{camera.width}x{camera.height} (EXIF rotation or a resized copy?)"
        )
    view = ColmapView(name, rgb, intrinsics_from_colmap(camera), image.cam_from_world().matrix(), camera)
    context = context_fn(view) if context_fn is not None else SampleContext(name=name)
    return refine(rgb, predictor, refiner, context=context, edges=False, **refine_options)


def _fit_image(image: Any, camera: Any, points3D: Any, src: np.ndarray, rules: _FitRules) -> dict[str, Any]:
    """The ``alignment.json`` record of one image: its observations, the usable ones, the
    fit of the map ``src`` to them and the reasons to exclude it (all but scale outliers,
    which need every image's fit)."""
    obs = image_observations(image, camera, points3D)
    keep = usable_observations(obs, camera.height, camera.width, rules.min_track_length, rules.max_reproj_error)
    entry: dict[str, Any] = {"observations": int(len(obs.z)), "usable": int(keep.sum()), "status": "ok", "reasons": []}
    if keep.sum() < rules.min_points:
        entry["reasons"].append(f"too_few_points: {int(keep.sum())} usable observations (need {rules.min_points})")
        return entry
    fit = fit_alignment(sample_bilinear(src, obs.rows[keep], obs.cols[keep]), obs.z[keep], rules.space)
    entry["alignment"] = asdict(fit)
    entry["max_depth"] = float(obs.z[keep].max() * rules.max_depth_factor)
    if not fit.scale > 0:
        entry["reasons"].append(f"non_positive_scale: {fit.scale:.4g}")
    if fit.median_rel_error > rules.max_median_error:
        entry["reasons"].append(
            f"poor_fit: median relative error {fit.median_rel_error:.3f} at the SfM points (limit {rules.max_median_error:g})"
        )
    return entry


def _refine_and_fit(
    rec: Any, views: list[tuple[int, str]], image_dir: Path, work: Path, predictor: Any, refiner: Any,
    rules: _FitRules, context_fn: Callable[[ColmapView], Any] | None, refine_options: dict[str, Any],
    say: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Refine and fit every image; returns ``{name: record}``. Each map to fit and its
    confidence wait in ``work`` (``<id>-src.npy``, ``<id>-conf.npy``) until the scale
    outliers are known, so that a large model's maps are not all held in memory."""
    from sddr_pipeline.confidence import confidence

    records: dict[str, dict[str, Any]] = {}
    for iid, name in views:
        say(f"refining {name}")
        result = _refine_image(rec, iid, name, image_dir, predictor, refiner, context_fn, refine_options)
        src = _alignment_source(result, rules.space)
        image = rec.images[iid]
        records[name] = _fit_image(image, rec.cameras[image.camera_id], rec.points3D, src, rules)
        work.mkdir(exist_ok=True)
        np.save(work / f"{iid}-src.npy", src.astype(np.float32))
        np.save(work / f"{iid}-conf.npy", confidence(result))
    return records


def _flag_outlier_records(records: dict[str, dict[str, Any]], rule: Literal["ratio", "mad"],
                          bounds: tuple[float, float], mad_k: float) -> float:
    """Add the scale-outlier reason (:func:`flag_scale_outliers`) to the records of the
    images not yet excluded; returns their median scale."""
    scales = {n: r["alignment"]["scale"] for n, r in records.items() if not r["reasons"]}
    outliers, median_scale = flag_scale_outliers(scales, rule, bounds, mad_k)
    for n, reason in outliers.items():
        records[n]["reasons"].append(reason)
    return median_scale


def _write_depth_outputs(
    out: Path, rec: Any, views: list[tuple[int, str]], image_dir: Path, work: Path,
    records: dict[str, dict[str, Any]], report: ColmapReport, space: Space, fused_stride: int,
    fused_min_confidence: float,
) -> list[Any]:
    """Write each image's COLMAP depth map, 3DGS PNG, confidence and ``depth_params.json``
    entry (an excluded image: an all-zero PNG and scale 0), fill the report's included /
    excluded lists and return the world-frame point clouds of the included maps."""
    from sddr_pipeline.confidence import save_confidence
    from sddr_pipeline.data import read_image
    from sddr_pipeline.geometry.pointcloud import depth_to_pointcloud

    depth_params: dict[str, dict[str, float]] = {}
    clouds = []
    for iid, name in views:
        entry, stem = records[name], _stem(name)
        src = np.load(work / f"{iid}-src.npy")
        if entry["reasons"]:
            entry["status"] = "excluded"
            report.excluded[name] = "; ".join(entry["reasons"])
            atomic_write_bytes(out / "depths" / f"{stem}.png", _png_bytes(np.zeros(src.shape, np.uint16)))
            depth_params[stem] = {"scale": 0.0, "offset": 0.0}
            continue
        fit = entry["alignment"]
        depth = apply_alignment(src, fit["scale"], fit["offset"], space, entry["max_depth"]).astype(np.float32)
        write_colmap_depth(out / "stereo" / "depth_maps" / f"{name}.geometric.bin", depth)
        png, scale, offset = encode_inverse_depth_png(depth)
        atomic_write_bytes(out / "depths" / f"{stem}.png", _png_bytes(png))
        depth_params[stem] = {"scale": scale, "offset": offset}
        conf = np.load(work / f"{iid}-conf.npy")
        save_confidence(out / "confidence" / f"{stem}.npy", conf)
        image = rec.images[iid]
        pose = np.eye(4)
        pose[:3] = image.cam_from_world().matrix()
        clouds.append(depth_to_pointcloud(
            depth, intrinsics_from_colmap(rec.cameras[image.camera_id]), read_image(image_dir / name),
            mask=conf >= fused_min_confidence, stride=fused_stride, camera_to_world=np.linalg.inv(pose),
        ))
        entry["valid_fraction"] = float((depth > 0).mean())
        report.included.append(name)
    atomic_write_json(out / "sparse" / "0" / "depth_params.json", depth_params)
    return clouds


def _write_fused(path: Path, clouds: list[Any], voxel: float | None) -> int:
    """Merge the clouds (voxel-downsampled when ``voxel``) into ``path`` unless empty;
    returns the number of points."""
    from sddr_pipeline.geometry.pointcloud import merge_clouds, voxel_downsample, write_ply

    fused = merge_clouds(clouds)
    if voxel and len(fused):
        fused = voxel_downsample(fused, voxel)
    if len(fused):
        write_ply(path, fused)
    return len(fused)


def run_colmap(
    workspace: str | Path,
    predictor: Any,
    refiner: Any,
    output: str | Path | None = None,
    *,
    mode: str = "one-stage",
    space: Space = "inverse",
    min_track_length: int = 2,
    max_reproj_error: float = 2.0,
    min_points: int = 10,
    max_median_error: float = 0.2,
    outlier_rule: Literal["ratio", "mad"] = "ratio",
    scale_bounds: tuple[float, float] = (0.2, 5.0),
    mad_k: float = 3.5,
    max_depth_factor: float = 10.0,
    low_res: int | None = None,
    high_res: int | None = None,
    images_path: str | Path | None = None,
    fused_stride: int = 2,
    fused_voxel: float | None = None,
    fused_min_confidence: float = 0.0,
    context_fn: Callable[[ColmapView], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ColmapReport:
    """Refine every registered image of a COLMAP workspace and scale it to the SfM points
    (module docstring: filters, exclusion rules, OUTPUT layout).

    ``max_depth_factor``: depths beyond this many times the image's farthest usable SfM
    point are dropped (0). ``context_fn(view)`` may return a ``SampleContext`` for the
    predictor (e.g. ground truth for ``simulated``), for the image AS REFINED (after
    undistortion). Returns a :class:`ColmapReport`. On an error, an OUTPUT folder this
    call created is removed again.
    """
    pycolmap = require_pycolmap()
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    ws = Path(workspace)
    out = Path(output) if output is not None else ws / "sddr"
    _check_output(ws, out)
    image_dir = Path(images_path) if images_path else ws / "images"
    sparse = ws / "sparse" / "0"
    rec = _read_model(ws, image_dir, pycolmap)
    _model_names(rec, str(sparse))  # before any file operation: a name must not lead out of OUTPUT
    rules = _FitRules(space, min_track_length, max_reproj_error, min_points, max_median_error, max_depth_factor)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        rec, image_dir, undistorted = _prepare_model(rec, sparse, out, image_dir, pycolmap)
        names_by_id = _model_names(rec, str(out / "sparse" / "0"))
        views = sorted(names_by_id.items(), key=lambda item: item[1])
        if not views:
            raise ColmapError(f"{ws}: the model has no registered images")
        report = ColmapReport(out, undistorted=undistorted)
        if not undistorted:
            _link_images(image_dir, out / "images", [name for _, name in views])
        work = out / ".work"
        refine_options = {"mode": mode, "low_res": low_res, "high_res": high_res}
        records = _refine_and_fit(rec, views, image_dir, work, predictor, refiner, rules, context_fn, refine_options, say)
        report.median_scale = _flag_outlier_records(records, outlier_rule, scale_bounds, mad_k)
        clouds = _write_depth_outputs(out, rec, views, image_dir, work, records, report, space, fused_stride,
                                      fused_min_confidence)
        shutil.rmtree(work, ignore_errors=True)
        report.fused_points = _write_fused(out / "fused.ply", clouds, fused_voxel)
        report.seconds = time.perf_counter() - t0
        settings = {
            "mode": mode, "space": space, "min_track_length": min_track_length, "max_reproj_error": max_reproj_error,
            "min_points": min_points, "max_median_error": max_median_error, "outlier_rule": outlier_rule,
            "scale_bounds": list(scale_bounds), "mad_k": mad_k, "max_depth_factor": max_depth_factor,
            "predictor": getattr(predictor, "name", type(predictor).__name__),
            "refiner": getattr(refiner, "version", "unknown"),
        }
        atomic_write_json(out / "alignment.json", {
            "workspace": str(ws.resolve()), "settings": settings, "undistorted": undistorted,
            "median_scale": report.median_scale, "included": report.included, "excluded": report.excluded,
            "images": records, "fused_points": report.fused_points, "seconds": round(report.seconds, 2),
        })
        return report
    except BaseException:
        if created:  # the folder is ours and incomplete: leave nothing half-written
            shutil.rmtree(out, ignore_errors=True)
        raise


class GroundTruthDepth:
    """A ``context_fn`` for :func:`run_colmap` that hands each image its ground-truth depth
    from a folder: ``FOLDER/<image name without extension>.png`` (uint16, millimetres ->
    metres; 0 = invalid) or ``.npy`` (float depth), falling back to the bare stem
    (``FOLDER/<stem>.png|.npy``) for names in sub-folders.

    FOR SIMULATED / BENCHMARK USE ONLY: the ``simulated`` predictor builds its "prediction"
    from this depth (the paper's noise model applied to ground truth). A real capture has
    no such depth; real predictors ignore it. The maps must have the images' size, so the
    model's cameras must be SIMPLE_PINHOLE/PINHOLE (undistorted images would not match).
    """

    EXTENSIONS = (".png", ".npy")

    def __init__(self, folder: str | Path, png_scale: float = 1e-3) -> None:
        self.folder = Path(folder)
        self.png_scale = png_scale
        if not self.folder.is_dir():
            raise ColmapError(f"ground-truth depth folder {self.folder} does not exist")

    def candidates(self, name: str) -> list[Path]:
        stems = [_stem(name)]
        if PurePosixPath(name).stem != stems[0]:
            stems.append(PurePosixPath(name).stem)
        return [self.folder / f"{s}{ext}" for s in stems for ext in self.EXTENSIONS]

    def path_for(self, name: str) -> Path:
        for path in self.candidates(name):
            if path.is_file():
                return path
        tried = ", ".join(str(p) for p in self.candidates(name))
        raise ColmapError(f"no ground-truth depth for image {name!r} (tried {tried})")

    def load(self, name: str) -> np.ndarray:
        """The depth of image ``name`` as float32 HxW (0 = invalid)."""
        from sddr_pipeline.data import read_depth_png16

        path = self.path_for(name)
        try:
            if path.suffix == ".npy":
                depth = np.load(path, allow_pickle=False).astype(np.float32)
            else:
                depth = (read_depth_png16(path).astype(np.float64) * self.png_scale).astype(np.float32)
        except Exception as exc:  # a broken file: name it
            raise ColmapError(f"cannot read ground-truth depth {path} for image {name!r}: {exc}") from exc
        if depth.ndim != 2:
            raise ColmapError(f"ground-truth depth {path} for image {name!r} is not a 2-D map (shape {depth.shape})")
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0
        return depth

    def check_workspace(self, workspace: str | Path) -> None:
        """Fail early (before any refinement) when the model's cameras are not pinhole or a
        registered image has no ground-truth file. A workspace without a model is left to
        :func:`run_colmap`, which says so."""
        sparse = Path(workspace) / "sparse" / "0"
        if not (sparse / "cameras.bin").is_file() and not (sparse / "cameras.txt").is_file():
            return
        rec = require_pycolmap().Reconstruction(str(sparse))
        distorted = sorted({c.model.name for c in rec.cameras.values() if c.model.name not in PINHOLE_MODELS})
        if distorted:
            raise ColmapError(
                f"ground-truth depth needs SIMPLE_PINHOLE/PINHOLE cameras, but the model has {', '.join(distorted)}: "
                "its images are undistorted (resampled and cropped) before refinement, so the depth maps would not match"
            )
        missing = []
        for name in _model_names(rec, str(sparse)).values():
            if not any(p.is_file() for p in self.candidates(name)):
                missing.append(name)
        if missing:
            missing.sort()
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ColmapError(
                f"no ground-truth depth in {self.folder} for image(s) {', '.join(repr(m) for m in missing[:3])}{more} "
                f"(expected e.g. {self.candidates(missing[0])[0]} or .npy)"
            )

    def __call__(self, view: ColmapView) -> Any:
        from sddr_pipeline.predictors.base import SampleContext

        depth = self.load(view.name)
        h, w = view.image.shape[:2]
        if depth.shape != (h, w):
            raise ColmapError(
                f"ground-truth depth {self.path_for(view.name)} is {depth.shape[1]}x{depth.shape[0]} but image "
                f"{view.name!r} is {w}x{h}"
            )
        return SampleContext(name=view.name, gt=depth, gt_kind="depth", intrinsics=view.intrinsics.K)


def _alignment_source(result: Any, space: Space) -> np.ndarray:
    """The map the SfM fit is made on: the refined disparity-like map for ``inverse``; the
    refined map in depth polarity for ``depth``."""
    if space == "inverse":
        return np.asarray(result.normalized, dtype=np.float64)
    if space != "depth":
        raise ValueError(f"space must be 'inverse' or 'depth', got {space!r}")
    from sddr_pipeline.inference.normalize import invert_with_floor

    d = np.asarray(result.depth, dtype=np.float64)
    if result.space == "depth":
        return d
    return invert_with_floor(d, tiny=1e-9)


# ------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``sddr colmap WORKSPACE --predictor SPEC [--weights W] [--output DIR] ...``."""
    p.add_argument("workspace", type=Path, help="folder with images/ and sparse/0")
    p.add_argument("--predictor", required=True, help="predictor spec (see `sddr refine`)")
    p.add_argument("--weights", default="default", help="refiner weights folder or .safetensors (default: %(default)s)")
    p.add_argument("--output", type=Path, default=None, help="new output folder (default: WORKSPACE/sddr)")
    p.add_argument("--images", type=Path, default=None, help="image folder (default: WORKSPACE/images)")
    p.add_argument("--mode", choices=("one-stage", "two-stage"), default="one-stage")
    p.add_argument("--space", choices=("inverse", "depth"), default="inverse", help="alignment space (default: %(default)s)")
    p.add_argument("--min-track-length", type=int, default=2)
    p.add_argument("--max-reproj-error", type=float, default=2.0, help="px (default: %(default)s)")
    p.add_argument("--min-points", type=int, default=10)
    p.add_argument("--max-median-error", type=float, default=0.2, help="exclude maps whose median relative error at the SfM points exceeds this")
    p.add_argument("--outlier-rule", choices=("ratio", "mad"), default="ratio", help="scale outliers: 0.2-5x the median (ratio) or a MAD rule")
    p.add_argument("--low-res", type=int, default=None)
    p.add_argument("--high-res", type=int, default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--fused-voxel", type=float, default=None, help="voxel size for fused.ply (model units)")
    p.add_argument("--gt-depth", type=Path, default=None, metavar="DIR",
                   help="SIMULATED/BENCHMARK USE ONLY: ground-truth depth per image, DIR/<image stem>.png (uint16 mm) "
                        "or .npy (metres), handed to the predictor (what the `simulated` predictor needs; real "
                        "predictors ignore it); e.g. the gt_depth/ folder of `sddr capture-sample`")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cli)


def cli(args: argparse.Namespace) -> int:
    """Entry point of ``sddr colmap``."""
    from sddr_pipeline.devices import resolve_device
    from sddr_pipeline.models import Refiner, RefinerWeightsError
    from sddr_pipeline.predictors import PredictorError, get_predictor

    try:
        context_fn = None
        if args.gt_depth is not None:
            context_fn = GroundTruthDepth(args.gt_depth)
            context_fn.check_workspace(args.workspace)
        device = resolve_device(args.device)
        refiner = Refiner.from_pretrained(args.weights, device=device)
        predictor = get_predictor(args.predictor, device=device)
        report = run_colmap(
            args.workspace, predictor, refiner, args.output, mode=args.mode, space=args.space,
            min_track_length=args.min_track_length, max_reproj_error=args.max_reproj_error, min_points=args.min_points,
            max_median_error=args.max_median_error, outlier_rule=args.outlier_rule, low_res=args.low_res,
            high_res=args.high_res, images_path=args.images, fused_voxel=args.fused_voxel, context_fn=context_fn,
            progress=None if args.quiet else (lambda m: print(m, file=sys.stderr)),
        )
    except (ColmapError, RefinerWeightsError, PredictorError, ImportError, FileNotFoundError, ValueError) as exc:
        print(f"sddr colmap: {exc}", file=sys.stderr)
        return 2
    print(f"sddr colmap: {len(report.included)} maps written, {len(report.excluded)} excluded, "
          f"{report.fused_points} fused points in {report.seconds:.1f} s -> {report.output}")
    for name, reason in report.excluded.items():
        print(f"  excluded {name}: {reason}", file=sys.stderr)
    return 0


__all__ = [
    "Alignment",
    "ColmapError",
    "ColmapReport",
    "ColmapView",
    "GroundTruthDepth",
    "Observations",
    "add_arguments",
    "apply_alignment",
    "cli",
    "encode_inverse_depth_png",
    "fit_alignment",
    "flag_scale_outliers",
    "image_observations",
    "read_colmap_depth",
    "run_colmap",
    "sample_bilinear",
    "usable_observations",
    "write_colmap_depth",
]
