"""Metric depth -> coloured point clouds: back-projection (numpy), Open3D export and pictures.

Numerics (:func:`backproject`, :func:`depth_to_pointcloud`, :func:`voxel_downsample`,
:func:`rasterize_points`) are pure numpy. Open3D (``pip install open3d==0.20.0`` or
``open3d-cpu``) is imported only by the functions that read or write PLY files, estimate
normals or render.

Only METRIC depth can be back-projected: a relative map (unknown scale and shift) is
refused with :class:`RelativeDepthError`; give it a scale reference first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..io.atomic import atomic_path
from .intrinsics import Intrinsics, IntrinsicsError, intrinsics_from_sample, load_intrinsics

OPEN3D_HINT = (
    "pip install open3d==0.20.0 (or open3d-cpu==0.20.0); on Debian/Ubuntu it also needs "
    "apt-get install libusb-1.0-0 libgl1 libegl1"
)


class RelativeDepthError(ValueError):
    """A relative (unscaled) depth map was given where metric depth is required."""


METRIC_FIX = (
    "Make the maps metric: `sddr refine INPUT OUTPUT --scale-points N ...` (N pixels of each image's own "
    "RGB-D / LiDAR depth as the scale reference), `sddr colmap` (scaled to the SfM points), or a metric "
    "predictor (spec option `metric=true`)."
)
"""How to get metric maps; every relative-depth refusal ends with it."""


def require_open3d() -> Any:
    """``import open3d``, or an ImportError that names the package and system libraries."""
    try:
        import open3d
    except ImportError as exc:
        raise ImportError(f"this needs Open3D, which is not importable ({exc}): {OPEN3D_HINT}") from exc
    except OSError as exc:  # a missing shared library (libusb, libGL) surfaces as OSError
        raise ImportError(f"Open3D is installed but cannot load a system library ({exc}): {OPEN3D_HINT}") from exc
    return open3d


@dataclass
class PointCloud:
    """``points`` Nx3 float32 (metres), optional ``colors`` Nx3 uint8, ``normals`` Nx3
    float32 and per-point ``confidence`` N float32 (in [0, 1]; PLY files do not keep it)."""

    points: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None
    confidence: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.points = np.ascontiguousarray(self.points, dtype=np.float32).reshape(-1, 3)
        n = len(self.points)
        if self.colors is not None:
            self.colors = np.ascontiguousarray(self.colors, dtype=np.uint8).reshape(-1, 3)
            if len(self.colors) != n:
                raise ValueError(f"{len(self.colors)} colours for {n} points")
        if self.normals is not None:
            self.normals = np.ascontiguousarray(self.normals, dtype=np.float32).reshape(-1, 3)
            if len(self.normals) != n:
                raise ValueError(f"{len(self.normals)} normals for {n} points")
        if self.confidence is not None:
            self.confidence = np.ascontiguousarray(self.confidence, dtype=np.float32).reshape(-1)
            if len(self.confidence) != n:
                raise ValueError(f"{len(self.confidence)} confidences for {n} points")

    def __len__(self) -> int:
        return len(self.points)


def metric_depth(depth: np.ndarray, space: str, metric: bool, what: str = "depth map") -> np.ndarray:
    """Metric depth in metres from a refined map's units (``space``, ``metric`` as in
    ``RefineResult`` / ``manifest.json``); non-positive or non-finite pixels become 0.

    Raises :class:`RelativeDepthError` for relative maps.
    """
    if not metric:
        raise RelativeDepthError(
            f"{what} is RELATIVE ({space} up to an unknown scale and shift): a point cloud needs metric depth. "
            f"{METRIC_FIX}"
        )
    d = np.asarray(depth, dtype=np.float64)
    if space == "disparity":
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(d > 0, 1.0 / d, 0.0)
    elif space != "depth":
        raise ValueError(f"unknown space {space!r}; expected 'depth' or 'disparity'")
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0)
    return d.astype(np.float32)


def resize_colors(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """An HxWx3 uint8 image at ``height`` x ``width`` (bilinear; unchanged when it fits)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"colour image must be HxWx3 uint8, got {img.dtype} {img.shape}")
    if img.shape[:2] == (height, width):
        return img
    return np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR))


def backproject(
    depth: np.ndarray, intrinsics: Intrinsics, mask: np.ndarray | None = None, stride: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-frame points ``(x, y, z)`` of every valid pixel (z > 0, finite, in ``mask``).

    ``intrinsics`` must already fit the map (see :meth:`Intrinsics.for_size`); pixel
    (v, u) goes to ``z * ((u - cx) / fx, (v - cy) / fy, 1)``. ``stride`` keeps every
    stride-th row and column. Returns (Nx3 float32 points, rows, cols).
    """
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be 2-D, got shape {d.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    valid = np.isfinite(d) & (d > 0)
    if mask is not None:
        if mask.shape != d.shape:
            raise ValueError(f"mask {mask.shape} does not match depth {d.shape}")
        valid &= mask.astype(bool)
    if stride > 1:
        keep = np.zeros_like(valid)
        keep[::stride, ::stride] = True
        valid &= keep
    rows, cols = np.nonzero(valid)
    z = d[rows, cols]
    x = (cols - intrinsics.cx) / intrinsics.fx * z
    y = (rows - intrinsics.cy) / intrinsics.fy * z
    return np.stack([x, y, z], axis=1).astype(np.float32), rows, cols


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to Nx3 points (float64 maths, float32 result)."""
    M = np.asarray(matrix, dtype=np.float64)
    if M.shape != (4, 4):
        raise ValueError(f"transform must be 4x4, got {M.shape}")
    p = np.asarray(points, dtype=np.float64)
    return (p @ M[:3, :3].T + M[:3, 3]).astype(np.float32)


def depth_to_pointcloud(
    depth: np.ndarray,
    intrinsics: Intrinsics,
    image: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    stride: int = 1,
    depth_max: float | None = None,
    camera_to_world: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    min_confidence: float | None = None,
) -> PointCloud:
    """A coloured point cloud from METRIC depth (metres, 0 = invalid).

    ``intrinsics`` are scaled to the map's size (see :mod:`.intrinsics`); the colour
    ``image`` is resized to the map when it differs. ``camera_to_world`` (4x4) moves the
    points into world coordinates. ``confidence`` (HxW, the map's size) is kept per
    point; with ``min_confidence`` only pixels of at least that confidence are
    back-projected (the confidence filter).
    """
    h, w = np.shape(depth)
    intr = intrinsics.for_size(h, w)
    m = None if depth_max is None else (np.asarray(depth) <= depth_max)
    if mask is not None:
        m = mask.astype(bool) if m is None else (m & mask.astype(bool))
    if confidence is not None and np.shape(confidence) != (h, w):
        raise ValueError(f"confidence {np.shape(confidence)} does not match depth {(h, w)}")
    if min_confidence is not None:
        if confidence is None:
            raise ValueError("min_confidence needs a confidence map")
        keep = np.asarray(confidence) >= min_confidence
        m = keep if m is None else (m & keep)
    pts, rows, cols = backproject(depth, intr, m, stride)
    colors = None if image is None else resize_colors(image, h, w)[rows, cols]
    if camera_to_world is not None:
        pts = transform_points(pts, camera_to_world)
    conf = None if confidence is None else np.asarray(confidence)[rows, cols]
    return PointCloud(pts, colors, confidence=conf)


def _concat(parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    return np.concatenate(parts) if all(p is not None for p in parts) else None  # type: ignore[arg-type]


def merge_clouds(clouds: Sequence[PointCloud]) -> PointCloud:
    """Concatenate clouds; colours, normals and confidence are kept only when every cloud
    has them."""
    if not clouds:
        return PointCloud(np.zeros((0, 3), np.float32))
    return PointCloud(np.concatenate([c.points for c in clouds]), _concat([c.colors for c in clouds]),
                      _concat([c.normals for c in clouds]), _concat([c.confidence for c in clouds]))


def voxel_keys(points: np.ndarray, voxel: float) -> np.ndarray:
    """Integer Nx3 index of the ``voxel``-metre cube of each point: ``floor(p / voxel)``.

    The grid is anchored at the world origin, so clouds downsampled separately (one per
    image, one per shard) share their voxels and can be merged and downsampled again."""
    if not voxel > 0:
        raise ValueError(f"voxel size must be positive, got {voxel}")
    return np.floor(np.asarray(points, dtype=np.float64) / float(voxel)).astype(np.int64)


def voxel_downsample(cloud: PointCloud, voxel: float) -> PointCloud:
    """One point per occupied ``voxel``-metre cube (:func:`voxel_keys`): the mean of its
    points, colours (rounded), normals (renormalised) and confidences, in the order of
    the cubes' first points. Pure numpy (float64 sums)."""
    keys = voxel_keys(cloud.points, voxel)
    if not len(keys):
        return PointCloud(cloud.points, cloud.colors, cloud.normals, cloud.confidence)
    _, first, inverse, counts = np.unique(keys, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(first, kind="stable")  # cubes in the order their first point comes
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    slot, n = rank[inverse], counts[order].astype(np.float64)

    def mean(values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64).reshape(len(keys), -1)
        sums = [np.bincount(slot, weights=v[:, k], minlength=len(n)) for k in range(v.shape[1])]
        return np.stack(sums, axis=1) / n[:, None]

    colors = None if cloud.colors is None else np.clip(np.rint(mean(cloud.colors)), 0, 255)
    normals = None
    if cloud.normals is not None:
        normals = mean(cloud.normals)
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        normals = np.where(length > 0, normals / np.where(length > 0, length, 1.0), 0.0)
    conf = None if cloud.confidence is None else mean(cloud.confidence)[:, 0]
    return PointCloud(mean(cloud.points), colors, normals, conf)


def nearest_distances(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance from each of ``points`` (Nx3) to its nearest point of
    ``reference`` (Mx3, M > 0), float64 (scipy k-d tree)."""
    from scipy.spatial import cKDTree

    ref = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    if not len(ref):
        raise ValueError("the reference cloud is empty")
    distances, _ = cKDTree(ref).query(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    return np.asarray(distances, dtype=np.float64)


# ------------------------------------------------------------------- Open3D bridge


def to_open3d(cloud: PointCloud) -> Any:
    """An ``open3d.geometry.PointCloud`` (colours as floats in [0, 1])."""
    o3d = require_open3d()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.points.astype(np.float64)))
    if cloud.colors is not None:
        pcd.colors = o3d.utility.Vector3dVector(cloud.colors.astype(np.float64) / 255.0)
    if cloud.normals is not None:
        pcd.normals = o3d.utility.Vector3dVector(cloud.normals.astype(np.float64))
    return pcd


def from_open3d(pcd: Any) -> PointCloud:
    """A :class:`PointCloud` from an ``open3d.geometry.PointCloud``."""
    pts = np.asarray(pcd.points)
    cols = np.clip(np.rint(np.asarray(pcd.colors) * 255), 0, 255).astype(np.uint8) if pcd.has_colors() else None
    nrm = np.asarray(pcd.normals) if pcd.has_normals() else None
    return PointCloud(pts, cols, nrm)


def estimate_normals(
    cloud: PointCloud, radius: float, max_nn: int = 30, camera_location: Sequence[float] | None = (0.0, 0.0, 0.0)
) -> PointCloud:
    """Normals from local PCA within ``radius`` metres (Open3D), oriented towards
    ``camera_location`` (None: unoriented)."""
    o3d = require_open3d()
    pcd = to_open3d(cloud)
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=float(radius), max_nn=int(max_nn)))
    if camera_location is not None:
        pcd.orient_normals_towards_camera_location(np.asarray(camera_location, dtype=np.float64))
    return from_open3d(pcd)


def _atomic_o3d_write(path: Path, write: Callable[[str], bool]) -> Path:
    """``write(file_name)`` (an Open3D writer, False on failure) into ``path`` atomically."""
    with atomic_path(path) as tmp:
        if not write(str(tmp)):
            raise OSError(f"Open3D could not write {path}")
    return path


def write_ply(path: str | Path, cloud: PointCloud) -> Path:
    """Write a binary PLY (atomically: temporary name in the same folder, then rename)."""
    o3d = require_open3d()
    pcd = to_open3d(cloud)
    return _atomic_o3d_write(Path(path), lambda p: o3d.io.write_point_cloud(p, pcd, write_ascii=False))


def write_mesh_ply(path: str | Path, mesh: Any) -> Path:
    """Write an Open3D triangle mesh as binary PLY, atomically."""
    o3d = require_open3d()
    return _atomic_o3d_write(Path(path), lambda p: o3d.io.write_triangle_mesh(p, mesh, write_ascii=False))


def read_ply(path: str | Path) -> PointCloud:
    """Read a point-cloud PLY with Open3D."""
    o3d = require_open3d()
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return from_open3d(o3d.io.read_point_cloud(str(path)))


# ------------------------------------------------------------------------ pictures


def rasterize_points(
    points: np.ndarray,
    colors: np.ndarray | None,
    K: np.ndarray,
    world_to_camera: np.ndarray,
    height: int,
    width: int,
    radius: int = 1,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Z-buffered splatting of coloured points into an HxWx3 uint8 picture (pure numpy).

    Each point covers a (2*radius+1)^2 square; nearer points win. Points without colours
    are shaded by depth.
    """
    cam = transform_points(points, world_to_camera).astype(np.float64)
    z = cam[:, 2]
    ok = z > 1e-6
    u = np.rint(K[0, 0] * cam[ok, 0] / z[ok] + K[0, 2]).astype(np.int64)
    v = np.rint(K[1, 1] * cam[ok, 1] / z[ok] + K[1, 2]).astype(np.int64)
    zz = z[ok]
    if colors is None:
        t = (zz - zz.min()) / max(float(np.ptp(zz)), 1e-9) if zz.size else zz
        col = np.stack([200 - 150 * t] * 3, axis=1).astype(np.uint8)
    else:
        col = np.asarray(colors, dtype=np.uint8)[ok]
    order = np.argsort(-zz, kind="stable")  # far first: nearer points overwrite them
    u, v, col = u[order], v[order], col[order]
    img = np.empty((height, width, 3), np.uint8)
    img[:] = background
    zbuf = np.full((height, width), np.inf)
    zs = zz[order]
    for dv in range(-radius, radius + 1):
        for du in range(-radius, radius + 1):
            uu, vv = u + du, v + dv
            inside = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
            uu, vv, cc, z_in = uu[inside], vv[inside], col[inside], zs[inside]
            nearer = z_in <= zbuf[vv, uu]
            img[vv[nearer], uu[nearer]] = cc[nearer]
            zbuf[vv[nearer], uu[nearer]] = np.minimum(zbuf[vv[nearer], uu[nearer]], z_in[nearer])
    return img


def _geometry_arrays(geometry: Any) -> dict[str, np.ndarray]:
    """Plain arrays of an Open3D mesh or point cloud (vertices, triangles, colours)."""
    if hasattr(geometry, "triangles"):
        out = {"vertices": np.asarray(geometry.vertices, dtype=np.float64),
               "triangles": np.asarray(geometry.triangles, dtype=np.int32)}
        if geometry.has_vertex_colors():
            out["colors"] = np.asarray(geometry.vertex_colors, dtype=np.float64)
        return out
    out = {"vertices": np.asarray(geometry.points, dtype=np.float64)}
    if geometry.has_colors():
        out["colors"] = np.asarray(geometry.colors, dtype=np.float64)
    return out


def render_offscreen(arrays: dict[str, np.ndarray], K: np.ndarray, world_to_camera: np.ndarray, height: int, width: int) -> np.ndarray:
    """Render one mesh (``vertices``, ``triangles``, optional ``colors`` in [0, 1]) or point
    cloud (no ``triangles``) with Open3D's ``OffscreenRenderer`` (headless; needs Vulkan or
    EGL, e.g. ``apt-get install libvulkan1 mesa-vulkan-drivers``). HxWx3 uint8."""
    o3d = require_open3d()
    from open3d.visualization import rendering

    vec3 = o3d.utility.Vector3dVector
    if "triangles" in arrays:
        geometry = o3d.geometry.TriangleMesh(vec3(arrays["vertices"]), o3d.utility.Vector3iVector(arrays["triangles"]))
        if "colors" in arrays:
            geometry.vertex_colors = vec3(np.clip(arrays["colors"], 0, 1))
        geometry.compute_vertex_normals()
        shader = "defaultLit"
    else:
        geometry = o3d.geometry.PointCloud(vec3(arrays["vertices"]))
        if "colors" in arrays:
            geometry.colors = vec3(np.clip(arrays["colors"], 0, 1))
        shader = "defaultUnlit"
    renderer = rendering.OffscreenRenderer(int(width), int(height))
    renderer.scene.set_background([1.0, 1.0, 1.0, 1.0])
    material = rendering.MaterialRecord()
    material.shader = shader
    material.point_size = 2.0
    renderer.scene.add_geometry("geometry", geometry, material)
    intr = o3d.camera.PinholeCameraIntrinsic(int(width), int(height), K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    renderer.setup_camera(intr, np.asarray(world_to_camera, dtype=np.float64))
    return np.asarray(renderer.render_to_image()).copy()


def _render_worker(job: str) -> None:
    data = dict(np.load(job))
    shape = data.pop("shape")
    K, w2c = data.pop("K"), data.pop("world_to_camera")
    image = render_offscreen(data, K, w2c, int(shape[0]), int(shape[1]))
    np.save(job + ".out.npy", image)


def render_views(
    geometries: Sequence[Any], K: np.ndarray, world_to_camera: np.ndarray, height: int, width: int,
    timeout: float = 180.0, attempts: int = 2,
) -> tuple[list[np.ndarray], list[str]]:
    """Pictures of Open3D geometries (meshes lit, clouds unlit), one per geometry.

    Each view is rendered by Open3D's offscreen renderer in a child process with a time
    limit: on this machine's software Vulkan (llvmpipe) Open3D 0.20 sometimes stalls
    forever on a mesh it renders in seconds on the next try. A view that still fails is
    rasterised with :func:`rasterize_points`. Returns (images, method per view).
    """
    import multiprocessing
    import tempfile

    images, methods = [], []
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="sddr-render-") as tmp:
        for i, geometry in enumerate(geometries):
            arrays = _geometry_arrays(geometry)
            job = str(Path(tmp) / f"view{i}.npz")
            np.savez(job, K=np.asarray(K, dtype=np.float64), world_to_camera=np.asarray(world_to_camera, dtype=np.float64),
                     shape=np.array([height, width]), **arrays)
            image = None
            for _ in range(attempts):
                proc = ctx.Process(target=_render_worker, args=(job,))
                proc.start()
                proc.join(timeout)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                    continue
                if proc.exitcode == 0 and Path(job + ".out.npy").is_file():
                    image = np.load(job + ".out.npy")
                    break
            if image is None:
                cols = np.clip(np.rint(arrays["colors"] * 255), 0, 255).astype(np.uint8) if "colors" in arrays else None
                image = rasterize_points(arrays["vertices"], cols, np.asarray(K), world_to_camera, height, width)
                methods.append("numpy-rasterizer")
            else:
                methods.append("open3d-offscreen")
            images.append(image)
    return images, methods


# ------------------------------------------------------------------- CLI function


def read_refine_manifest(folder: Path) -> dict:
    """The checked manifest of an ``sddr refine`` output (:func:`sddr_pipeline.io.read_manifest`):
    its image names become output file names here."""
    from ..io import read_manifest

    return read_manifest(folder)


def require_metric(folder: Path, manifest: dict, names: Sequence[str], purpose: str) -> None:
    """Refuse an ``sddr refine`` output whose maps ``names`` include relative ones, before
    anything else is read: :class:`RelativeDepthError` naming how many, the first one, and
    :data:`METRIC_FIX`. ``purpose`` says what needs metric depth."""
    images = manifest.get("images", {})
    relative = [n for n in names if not images.get(n, {}).get("metric")]
    if relative:
        raise RelativeDepthError(
            f"{folder}: {len(relative)} of {len(names)} map(s) are RELATIVE (e.g. {relative[0]!r}), up to an unknown "
            f"scale and shift, but {purpose} needs metric depth. {METRIC_FIX}"
        )


def open_refined_input(manifest: dict) -> Any:
    """The dataset an ``sddr refine`` output was made from (for its intrinsics and poses)."""
    from ..data import open_dataset

    source = manifest.get("input")
    if not source or not Path(source).exists():
        raise IntrinsicsError(f"the refined input {source!r} is not available to read intrinsics or poses from")
    return open_dataset(source, layout=manifest.get("layout", "auto"))


def _dataset_intrinsics(dataset: Any, name: str) -> Intrinsics:
    if name not in dataset.names:
        raise IntrinsicsError(f"{dataset.root} has no sample {name!r} to take intrinsics from")
    return intrinsics_from_sample(dataset[dataset.names.index(name)])


def load_output_depth(folder: Path, name: str) -> tuple[np.ndarray, dict]:
    """Metric depth (metres) of one image of an ``sddr refine`` output folder, with its
    manifest entry; relative maps raise :class:`RelativeDepthError`."""
    from ..io import load_depth

    dm = load_depth(folder, name)
    return metric_depth(dm.depth, dm.space, dm.metric, f"{folder}/depth/{name}.npy"), dm.entry


def pointcloud_from_output(
    input: str | Path,
    intrinsics_file: str | Path | None,
    output_ply: str | Path,
    voxel: float | None = None,
    *,
    name: str | None = None,
    stride: int = 1,
    depth_max: float | None = None,
    normals: bool = False,
) -> dict[str, Any]:
    """Back-project refined METRIC depth from an ``sddr refine`` output folder to PLY.

    ``intrinsics_file``: JSON (see :mod:`.intrinsics`); None reads them from the refined
    input dataset (e.g. KITTI, NYU, RGB-D sequences). ``output_ply`` ending in ``.ply``
    gets one cloud (the folder must hold one image, or pass ``name``); any other path is
    a folder that receives ``<name>.ply`` per image. Colours come from each input image.
    ``voxel`` (metres) downsamples; ``normals`` estimates normals (radius 3 voxels, or
    2 % of the cloud's median depth). Returns a report of what was written.
    """
    from ..data import read_image

    folder, out = Path(input), Path(output_ply)
    manifest = read_refine_manifest(folder)
    done = sorted(n for n, e in manifest.get("images", {}).items() if e.get("status") == "done")
    if name is not None:
        if name not in done:
            raise KeyError(f"{folder}: no completed image named {name!r} (completed: {', '.join(done[:10]) or 'none'})")
        done = [name]
    if not done:
        raise ValueError(f"{folder}: no completed images")
    require_metric(folder, manifest, done, "a point cloud")
    single = out.suffix.lower() == ".ply"
    if single and len(done) > 1:
        raise ValueError(f"{folder} holds {len(done)} images; pass name=... (--name) or an output folder instead of {out}")
    shared = load_intrinsics(intrinsics_file) if intrinsics_file is not None else None
    dataset = open_refined_input(manifest) if shared is None else None
    report: dict[str, Any] = {"input": str(folder), "outputs": {}}
    for n in done:
        depth, entry = load_output_depth(folder, n)
        intr = shared if shared is not None else _dataset_intrinsics(dataset, n)
        src = Path(entry.get("input", ""))
        image = read_image(src) if src.is_file() else None
        cloud = depth_to_pointcloud(depth, intr, image, stride=stride, depth_max=depth_max)
        if voxel:
            cloud = voxel_downsample(cloud, voxel)
        if normals and len(cloud):
            radius = 3 * voxel if voxel else 0.02 * float(np.median(cloud.points[:, 2]))
            cloud = estimate_normals(cloud, radius)
        target = out if single else out / f"{n}.ply"
        write_ply(target, cloud)
        report["outputs"][n] = {"ply": str(target), "points": len(cloud), "colors": image is not None}
    return report
