"""Multi-view TSDF fusion of metric depth maps (Open3D tensor ``VoxelBlockGrid``) and
surface-to-surface distances for judging the result.

Open3D 0.20's legacy ``ScalableTSDFVolume`` returns empty geometry; the tensor
``VoxelBlockGrid`` is used instead. Poses are CAMERA-TO-WORLD 4x4 matrices (as in Redwood
``.log`` files and ``Sample.meta["pose"]``); integration takes their inverse.

The RGB-D demo (:func:`evaluate_rgbd_fusion`, reference surface from the exact depth versus
SDDR-refined maps scaled with ~200 sparse metric depths per frame) runs as
``python -m sddr_pipeline.plugins.pointcloud ROOT OUT --weights W --figure PNG``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from .intrinsics import Intrinsics, IntrinsicsError, intrinsics_from_sample, load_intrinsics
from .pointcloud import (
    read_refine_manifest,
    require_metric,
    from_open3d,
    load_output_depth,
    metric_depth,
    open_refined_input,
    render_views,
    require_open3d,
    resize_colors,
    write_mesh_ply,
    write_ply,
)


@dataclass
class Frame:
    """One view to fuse: METRIC ``depth`` (HxW metres, 0 = invalid), its 4x4
    ``camera_to_world`` pose, an optional HxWx3 uint8 ``color`` (resized to the depth map
    when it differs) and optional per-frame ``intrinsics`` (else the shared ones)."""

    depth: np.ndarray
    camera_to_world: np.ndarray
    color: np.ndarray | None = None
    intrinsics: Intrinsics | None = None
    name: str = ""


def fuse_tsdf(
    frames: Sequence[Frame],
    intrinsics: Intrinsics | None = None,
    voxel: float = 0.01,
    trunc: float | None = None,
    depth_max: float = 4.0,
    *,
    output: Literal["mesh", "pointcloud"] = "mesh",
    min_weight: float = 1.0,
    block_count: int = 10000,
    device: str = "CPU:0",
) -> Any:
    """Fuse metric depth maps into a TSDF and extract a coloured surface.

    ``voxel`` and ``trunc`` (truncation distance, default 4 voxels) are in metres; depth
    beyond ``depth_max`` is ignored. Returns an ``open3d.geometry.TriangleMesh``
    (``output="mesh"``) or ``open3d.geometry.PointCloud``; surfaces seen with a total
    weight under ``min_weight`` are dropped. ``block_count`` is the initial hash-map
    capacity (it grows as needed).
    """
    o3d = require_open3d()
    o3c = o3d.core
    if not frames:
        raise ValueError("no frames to fuse")
    if not voxel > 0:
        raise ValueError(f"voxel must be positive, got {voxel}")
    trunc = 4.0 * voxel if trunc is None else float(trunc)
    if trunc < voxel:
        raise ValueError(f"trunc ({trunc}) must be at least one voxel ({voxel})")
    if output not in ("mesh", "pointcloud"):
        raise ValueError(f"output must be 'mesh' or 'pointcloud', got {output!r}")
    dev = o3c.Device(device)
    coloured = all(f.color is not None for f in frames)
    names, dtypes, channels = ["tsdf", "weight"], [o3c.float32, o3c.float32], [1, 1]
    if coloured:
        names.append("color")
        dtypes.append(o3c.float32)
        channels.append(3)
    vbg = o3d.t.geometry.VoxelBlockGrid(names, dtypes, channels, float(voxel), 8, int(block_count), dev)
    multiplier = trunc / voxel
    for i, f in enumerate(frames):
        d = np.asarray(f.depth, dtype=np.float32)
        if d.ndim != 2:
            raise ValueError(f"frame {f.name or i}: depth must be 2-D, got {d.shape}")
        intr = f.intrinsics or intrinsics
        if intr is None:
            raise ValueError(f"frame {f.name or i} has no intrinsics and none were given for all frames")
        K = intr.for_size(*d.shape).K
        pose = np.asarray(f.camera_to_world, dtype=np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f"frame {f.name or i}: pose must be a finite 4x4 camera-to-world matrix")
        d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
        depth_img = o3d.t.geometry.Image(o3c.Tensor(d, device=dev))
        Kt = o3c.Tensor(K, o3c.float64)
        extrinsic = o3c.Tensor(np.linalg.inv(pose), o3c.float64)
        blocks = vbg.compute_unique_block_coordinates(depth_img, Kt, extrinsic, 1.0, float(depth_max), multiplier)
        if coloured:
            rgb = resize_colors(f.color, *d.shape).astype(np.float32) / 255.0  # type: ignore[arg-type]
            color_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(rgb), device=dev))
            vbg.integrate(blocks, depth_img, color_img, Kt, Kt, extrinsic, 1.0, float(depth_max), multiplier)
        else:
            vbg.integrate(blocks, depth_img, Kt, extrinsic, 1.0, float(depth_max), multiplier)
    if output == "mesh":
        geometry = vbg.extract_triangle_mesh(weight_threshold=float(min_weight)).to_legacy()
        if geometry.has_vertex_colors():
            geometry.vertex_colors = o3d.utility.Vector3dVector(np.clip(np.asarray(geometry.vertex_colors), 0.0, 1.0))
        return geometry
    geometry = vbg.extract_point_cloud(weight_threshold=float(min_weight)).to_legacy()
    if geometry.has_colors():
        geometry.colors = o3d.utility.Vector3dVector(np.clip(np.asarray(geometry.colors), 0.0, 1.0))
    return geometry


# ------------------------------------------------------------- surface distances


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points drawn uniformly by area on a triangle mesh (seeded), Nx3 float64."""
    V = np.asarray(vertices, dtype=np.float64)
    T = np.asarray(triangles, dtype=np.int64)
    if len(T) == 0:
        raise ValueError("the mesh has no triangles")
    a, b, c = V[T[:, 0]], V[T[:, 1]], V[T[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not area.sum() > 0:
        raise ValueError("the mesh has zero area")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(T), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w0, w1, w2 = 1 - s, s * (1 - r2), s * r2
    return w0[:, None] * a[idx] + w1[:, None] * b[idx] + w2[:, None] * c[idx]


def point_to_surface(points: np.ndarray, mesh: Any) -> np.ndarray:
    """Unsigned distance from each point to the nearest triangle of an Open3D mesh."""
    o3d = require_open3d()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    q = o3d.core.Tensor(np.asarray(points, dtype=np.float32))
    return scene.compute_distance(q).numpy().astype(np.float64)


def compare_surfaces(mesh: Any, reference: Any, n_samples: int = 100_000, tau: float = 0.02, seed: int = 0) -> dict[str, float]:
    """Distances between a reconstructed mesh and a reference mesh, in metres.

    ``accuracy_*``: points sampled on ``mesh`` -> nearest point of the reference SURFACE
    (point-to-triangle); ``completeness_*``: reference samples -> ``mesh``. ``chamfer``
    is the mean of the two means; ``precision``/``recall``/``fscore`` count distances
    under ``tau``.
    """
    pa = sample_surface(np.asarray(mesh.vertices), np.asarray(mesh.triangles), n_samples, seed)
    pb = sample_surface(np.asarray(reference.vertices), np.asarray(reference.triangles), n_samples, seed + 1)
    acc = point_to_surface(pa, reference)
    comp = point_to_surface(pb, mesh)
    precision, recall = float((acc < tau).mean()), float((comp < tau).mean())
    return {
        "accuracy_mean": float(acc.mean()),
        "accuracy_median": float(np.median(acc)),
        "accuracy_p90": float(np.percentile(acc, 90)),
        "completeness_mean": float(comp.mean()),
        "completeness_median": float(np.median(comp)),
        "completeness_p90": float(np.percentile(comp, 90)),
        "chamfer": float(0.5 * (acc.mean() + comp.mean())),
        "tau": float(tau),
        "precision": precision,
        "recall": recall,
        "fscore": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
    }


# --------------------------------------------------------------- frames from data


def sparse_reference(gt: np.ndarray, n: int, seed: int = 0) -> Any:
    """A ``ScaleReference`` of ``n`` random valid pixels of metric ``gt`` (a stand-in for
    the SfM points a real capture would provide)."""
    from ..inference import ScaleReference

    rows, cols = np.nonzero(np.isfinite(gt) & (gt > 0))
    if len(rows) < 3:
        raise ValueError("ground truth has fewer than 3 valid pixels")
    pick = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return ScaleReference(np.stack([rows[pick], cols[pick]], axis=1), gt[rows[pick], cols[pick]].astype(np.float64))


def name_seed(name: str) -> int:
    """A seed from a sample's name (sha256): its reference pixels do not depend on run order."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def scale_points_reference(name: str, gt: np.ndarray | None, gt_kind: str, n: int) -> Any:
    """``--scale-points N``: a :func:`sparse_reference` of ``n`` random valid pixels of an
    image's own metric depth ``gt``, seeded by its ``name``; a ``ValueError`` naming the
    image when it has no metric depth."""
    if gt is None or gt_kind != "depth":
        what = "no depth map" if gt is None else f"{gt_kind} ground truth, not metric depth"
        raise ValueError(f"--scale-points needs the image's metric depth, but {name} has {what}")
    return sparse_reference(np.asarray(gt, dtype=np.float64), n, seed=name_seed(name))


def align_to_reference(disparity_like: np.ndarray, reference: Any) -> np.ndarray:
    """Metric depth from a disparity-like map: robust scale/shift of the map to 1/depth at
    the reference pixels (as ``refine`` does for its result), then inverted."""
    import torch

    from ..inference.alignment import fit_sparse_depth, sample_nearest

    values = sample_nearest(torch.from_numpy(np.asarray(disparity_like, dtype=np.float64)), reference.points)
    a, b = fit_sparse_depth(values, reference.depth)
    disp = a * np.asarray(disparity_like, dtype=np.float64) + b
    with np.errstate(divide="ignore"):
        return np.where(disp > 0, 1.0 / disp, 0.0).astype(np.float32)


@dataclass
class FusionEvaluation:
    """Meshes fused from exact depth (``reference``) and from each estimated variant, with
    surface distances and per-frame depth errors (median absolute relative error)."""

    reference: Any
    meshes: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    depth_errors: dict[str, list[float]]
    settings: dict[str, Any] = field(default_factory=dict)


def evaluate_rgbd_fusion(
    root: str | Path,
    predictor: Any,
    refiner: Any,
    *,
    voxel: float = 0.01,
    trunc: float | None = None,
    depth_max: float = 4.0,
    n_reference: int = 200,
    seed: int = 0,
    mode: str = "one-stage",
    low_res: int | None = None,
    high_res: int | None = None,
    n_samples: int = 100_000,
    frames: int | None = None,
) -> FusionEvaluation:
    """Fuse an RGB-D sequence (``rgbd_sequence`` layout with poses) from its exact depth
    and from SDDR-refined predictions, and measure how far the refined surface lies from
    the reference one.

    Each refined map is made metric with ``n_reference`` random ground-truth depths of its
    frame (:func:`sparse_reference`, standing in for SfM points). Variants ``"low"`` and
    ``"high"`` are the predictor's own low- and high-resolution outputs aligned to the
    same points, without refinement. ``frames`` limits the sequence to its first N frames.
    """
    from ..data import open_dataset
    from ..inference import refine
    from ..inference.normalize import as_map_tensor, resize

    ds = open_dataset(root, layout="rgbd_sequence")
    samples = ds[: frames or len(ds)]
    gt_frames: list[Frame] = []
    variants: dict[str, list[Frame]] = {"refined": [], "low": [], "high": []}
    errors: dict[str, list[float]] = {k: [] for k in variants}
    intr = None
    for i, sample in enumerate(samples):
        pose = sample.meta.get("pose")
        if pose is None:
            raise ValueError(f"{root}: frame {sample.name} has no pose (trajectory.log missing?)")
        intr = intrinsics_from_sample(sample)
        image = sample.image()
        gt = sample.gt
        ref = sparse_reference(gt, n_reference, seed + i)
        result = refine(
            image, predictor, refiner, mode=mode, low_res=low_res, high_res=high_res,  # type: ignore[arg-type]
            context=sample.context(), scale_reference=ref, edges=False,
        )
        refined = metric_depth(result.depth, result.space, result.metric, sample.name)
        aligned = {"refined": refined}
        for key, disparity_like in (("low", result.low_disp), ("high", result.high_disp)):
            disp = resize(as_map_tensor(disparity_like), gt.shape)[0, 0].numpy()
            aligned[key] = align_to_reference(disp, ref)
        valid = gt > 0
        for key, d in aligned.items():
            variants[key].append(Frame(d, pose, image, intr, sample.name))
            errors[key].append(float(np.median(np.abs(d[valid] - gt[valid]) / gt[valid])))
        gt_frames.append(Frame(gt, pose, image, intr, sample.name))
    reference = fuse_tsdf(gt_frames, intr, voxel, trunc, depth_max)
    meshes = {k: fuse_tsdf(v, intr, voxel, trunc, depth_max) for k, v in variants.items()}
    metrics = {k: compare_surfaces(m, reference, n_samples=n_samples, tau=2 * voxel, seed=seed) for k, m in meshes.items()}
    settings = {
        "root": str(root), "frames": len(samples), "voxel": voxel, "trunc": trunc if trunc is not None else 4 * voxel,
        "depth_max": depth_max, "n_reference": n_reference, "mode": mode, "seed": seed,
        "predictor": getattr(predictor, "name", type(predictor).__name__),
        "refiner": getattr(refiner, "version", "unknown"),
    }
    return FusionEvaluation(reference, meshes, metrics, errors, settings)


def distance_colored(mesh: Any, reference: Any, max_distance: float) -> Any:
    """A copy of ``mesh`` whose vertex colours show the distance to ``reference``
    (Turbo colormap, 0 -> ``max_distance`` metres)."""
    import copy

    from ..io.depth_files import colorize

    o3d = require_open3d()
    out = copy.deepcopy(mesh)
    dist = point_to_surface(np.asarray(mesh.vertices), reference)
    rgb = colorize(dist, 0.0, max_distance).astype(np.float64) / 255.0
    out.vertex_colors = o3d.utility.Vector3dVector(rgb)
    return out


def render_fusion_figure(
    evaluation: FusionEvaluation, camera_to_world: np.ndarray, intrinsics: Intrinsics, path: str | Path,
    max_distance: float = 0.05, pull_back: float = 0.6,
) -> str:
    """Write a PNG: the reference surface, the refined surface, and the refined surface
    coloured by its distance to the reference (0 to ``max_distance`` m), seen from a
    viewpoint ``pull_back`` metres behind the given camera. Returns the render method(s)."""
    import io as _io

    from PIL import Image, ImageDraw

    from ..io.atomic import atomic_write_bytes

    back = np.eye(4)
    back[2, 3] = -pull_back
    world_to_camera = np.linalg.inv(np.asarray(camera_to_world) @ back)
    w, h = intrinsics.width or 640, intrinsics.height or 480
    K = intrinsics.K
    refined = evaluation.meshes["refined"]
    views = [evaluation.reference, refined, distance_colored(refined, evaluation.reference, max_distance)]
    images, methods = render_views(views, K, world_to_camera, h, w)
    m = evaluation.metrics["refined"]
    captions = [
        "reference: TSDF of the exact depth",
        "SDDR-refined depth (metric from 200 sparse points/frame)",
        f"distance to reference, 0-{max_distance * 100:.0f} cm: median {m['accuracy_median'] * 100:.1f} cm, Chamfer {m['chamfer'] * 100:.1f} cm",
    ]
    tiles = []
    for img, text in zip(images, captions):
        tile = Image.fromarray(img)
        ImageDraw.Draw(tile).rectangle([0, 0, w, 18], fill=(255, 255, 255))
        ImageDraw.Draw(tile).text((6, 4), text, fill=(0, 0, 0))
        tiles.append(tile)
    canvas = Image.new("RGB", (w * len(tiles), h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * w, 0))
    buf = _io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return ", ".join(sorted(set(methods)))


# ------------------------------------------------------------------ CLI function


def read_poses(path: str | Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Camera-to-world poses for ``names``: a Redwood ``.log`` (frame i = i-th name in
    sorted order) or JSON ``{name: 4x4}``."""
    path = Path(path)
    if path.suffix == ".log":
        from ..data.datasets import read_redwood_log

        by_index = read_redwood_log(path)
        ordered = sorted(names)
        missing = [n for i, n in enumerate(ordered) if i not in by_index]
        if missing:
            raise ValueError(f"{path}: no pose for frames {missing[:5]} (frame i is the i-th name in sorted order)")
        return {n: by_index[i] for i, n in enumerate(ordered)}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read poses {path}: {exc}") from None
    out = {}
    for n in names:
        if n not in data:
            raise ValueError(f"{path}: no pose for {n!r}")
        M = np.asarray(data[n], dtype=np.float64)
        if M.shape != (4, 4):
            raise ValueError(f"{path}: pose of {n!r} is not 4x4")
        out[n] = M
    return out


def fuse_from_output(
    input: str | Path,
    output: str | Path,
    *,
    intrinsics_file: str | Path | None = None,
    poses_file: str | Path | None = None,
    voxel: float = 0.01,
    trunc: float | None = None,
    depth_max: float = 4.0,
    pointcloud: bool = False,
) -> dict[str, Any]:
    """Fuse every METRIC map of an ``sddr refine`` output folder into one PLY.

    Poses (camera-to-world) come from ``poses_file`` (Redwood ``.log`` or JSON
    ``{name: 4x4}``) or from the refined input dataset (``rgbd_sequence`` layout);
    intrinsics from ``intrinsics_file`` or that dataset. Colours from the input images.
    Writes a mesh (or, with ``pointcloud``, the TSDF's surface points) to ``output``.
    """
    from ..data import read_image

    folder = Path(input)
    manifest = read_refine_manifest(folder)
    names = sorted(n for n, e in manifest.get("images", {}).items() if e.get("status") == "done")
    if not names:
        raise ValueError(f"{folder}: no completed images")
    require_metric(folder, manifest, names, "TSDF fusion")
    shared = load_intrinsics(intrinsics_file) if intrinsics_file is not None else None
    dataset = None
    if poses_file is None or shared is None:
        try:
            dataset = open_refined_input(manifest)
        except IntrinsicsError as exc:
            raise ValueError(f"{exc}: pass --poses and --intrinsics") from None
    poses = read_poses(poses_file, names) if poses_file is not None else {}
    frames = []
    t0 = time.perf_counter()
    for n in names:
        depth, entry = load_output_depth(folder, n)
        sample = None
        if dataset is not None:
            if n not in dataset.names:
                raise ValueError(f"{dataset.root} has no sample {n!r}")
            sample = dataset[dataset.names.index(n)]
        pose = poses.get(n) if poses_file is not None else (sample.meta.get("pose") if sample is not None else None)
        if pose is None:
            raise ValueError(f"no pose for {n!r}: pass --poses (Redwood .log or JSON name -> 4x4 camera-to-world)")
        try:
            intr = shared if shared is not None else intrinsics_from_sample(sample)
        except IntrinsicsError as exc:
            raise ValueError(f"{exc}; pass --intrinsics") from None
        src = Path(entry.get("input", ""))
        frames.append(Frame(depth, pose, read_image(src) if src.is_file() else None, intr, n))
    geometry = fuse_tsdf(frames, None, voxel, trunc, depth_max, output="pointcloud" if pointcloud else "mesh")
    out = Path(output)
    if pointcloud:
        write_ply(out, from_open3d(geometry))
        size = len(geometry.points)
    else:
        write_mesh_ply(out, geometry)
        size = len(geometry.vertices)
    return {"input": str(folder), "output": str(out), "frames": len(frames), "kind": "pointcloud" if pointcloud else "mesh",
            "vertices": size, "seconds": round(time.perf_counter() - t0, 2)}
