"""Cameras of a capture: per-image intrinsics, camera-to-world poses and the SfM points
each image sees, from a COLMAP model or a nerfstudio ``transforms.json``.

The one reader of each format: ``sddr colmap`` (observations and their filters),
``sddr nerf`` (the transforms file), ``sddr capture-sample`` (the axis flip) and the
point-cloud pipeline's inputs (:func:`colmap_views`, :func:`transforms_views`) use these.

Conventions of a :class:`CameraView`: intrinsics in the integer-pixel-centre convention
(:mod:`.intrinsics`; COLMAP's and nerfstudio's principal points are shifted by -0.5 on the
way in); ``camera_to_world`` a 4x4 float64 matrix with OpenCV camera axes (x right, y
down, z forward), the world frame being the model's (COLMAP) or the file's (nerfstudio:
its OpenGL camera axes are flipped with :data:`OPENGL_FROM_OPENCV`).
"""
from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.names import check_name
from .intrinsics import Intrinsics, IntrinsicsError, intrinsics_from_colmap

OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiplying a camera-to-world pose by this flips its camera y and z axes
(OpenCV/COLMAP camera <-> OpenGL/nerfstudio camera; it is its own inverse)."""
DEFAULT_DEPTH_UNIT = 1e-3
"""nerfstudio's default ``depth_unit_scale_factor``: depth files in millimetres."""
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
PYCOLMAP_HINT = "pip install pycolmap==4.2.1"


class CameraError(ValueError):
    """A camera file (COLMAP model, transforms.json) cannot be used; the message says why."""


def require_pycolmap() -> Any:
    """``import pycolmap`` or an ImportError naming the package to install."""
    try:
        import pycolmap
    except ImportError as exc:
        raise ImportError(f"the COLMAP integration needs pycolmap ({exc}): {PYCOLMAP_HINT}") from exc
    return pycolmap


# --------------------------------------------------------------- observations


@dataclass
class Observations:
    """SfM observations of one image: keypoint rows/cols (integer-centre convention),
    camera-frame depth ``z`` of the 3-D point, its track length, its mean reprojection
    error and its reprojection error in this image (px)."""

    rows: np.ndarray
    cols: np.ndarray
    z: np.ndarray
    track_length: np.ndarray
    mean_error: np.ndarray
    image_error: np.ndarray


def image_observations(image: Any, camera: Any, points3D: Any) -> Observations:
    """Collect the observations of a ``pycolmap.Image`` (with its ``Camera`` and the
    reconstruction's ``points3D``)."""
    cam_from_world = image.cam_from_world().matrix()
    xy, xyz, tl, err = [], [], [], []
    for p2d in image.points2D:
        if not p2d.has_point3D():
            continue
        p3d = points3D[p2d.point3D_id]
        xy.append(p2d.xy)
        xyz.append(p3d.xyz)
        tl.append(p3d.track.length())
        err.append(p3d.error if p3d.has_error() else np.nan)
    if not xy:
        empty = np.zeros(0)
        return Observations(empty, empty, empty, empty.astype(int), empty, empty)
    xy_a, xyz_a = np.asarray(xy, dtype=np.float64), np.asarray(xyz, dtype=np.float64)
    cam = xyz_a @ cam_from_world[:, :3].T + cam_from_world[:, 3]
    proj = np.full_like(xy_a, np.nan)
    front = cam[:, 2] > 0
    if front.any():
        proj[front] = camera.img_from_cam(cam[front], check_cheirality=False)
    image_error = np.linalg.norm(proj - xy_a, axis=1)
    return Observations(
        rows=xy_a[:, 1] - 0.5,
        cols=xy_a[:, 0] - 0.5,
        z=cam[:, 2],
        track_length=np.asarray(tl, dtype=int),
        mean_error=np.asarray(err, dtype=np.float64),
        image_error=image_error,
    )


def usable_observations(obs: Observations, height: int, width: int, min_track_length: int, max_reproj_error: float) -> np.ndarray:
    """Boolean mask of observations passing the track-length, reprojection and
    visibility filters (pure)."""
    mean_err = np.where(np.isfinite(obs.mean_error), obs.mean_error, 0.0)
    return (
        (obs.z > 0)
        & np.isfinite(obs.z)
        & (obs.track_length >= min_track_length)
        & (mean_err <= max_reproj_error)
        & np.isfinite(obs.image_error)
        & (obs.image_error <= max_reproj_error)
        & (obs.rows >= 0) & (obs.rows <= height - 1)
        & (obs.cols >= 0) & (obs.cols <= width - 1)
    )


# ---------------------------------------------------------------------- views


@dataclass(frozen=True)
class CameraView:
    """One image of a capture: its ``name`` (path relative to the image folder, or to the
    transforms file), intrinsics, optional camera-to-world pose (OpenCV axes), the
    usable SfM observations as ``sparse_depth`` Nx3 float64 (row, col, depth) and, for
    transforms files, the ``depth_path`` of a depth map (relative to the file) with its
    ``depth_unit`` (metres per stored unit)."""

    name: str
    intrinsics: Intrinsics
    camera_to_world: np.ndarray | None = None
    sparse_depth: np.ndarray | None = None
    depth_path: str | None = None
    depth_unit: float | None = None


def pose_inverse(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a rigid 4x4 (or 3x4) transform, as 4x4 float64."""
    M = np.eye(4)
    M[:3] = np.asarray(matrix, dtype=np.float64)[:3]
    out = np.eye(4)
    out[:3, :3] = M[:3, :3].T
    out[:3, 3] = -M[:3, :3].T @ M[:3, 3]
    return out


def colmap_views(rec: Any, where: str, *, min_track_length: int = 2, max_reproj_error: float = 2.0) -> list[CameraView]:
    """The registered images of a ``pycolmap.Reconstruction``, sorted by name, with their
    usable observations (:func:`usable_observations`). Names are checked
    (:func:`~sddr_pipeline.io.names.check_name`); a distorted camera model is a
    :class:`CameraError` (undistort first: ``colmap image_undistorter`` or ``sddr colmap``)."""
    views = []
    for iid in rec.reg_image_ids():
        image = rec.images[iid]
        name = check_name(image.name, f"{where}: image {iid}", "image name")
        camera = rec.cameras[image.camera_id]
        try:
            intr = intrinsics_from_colmap(camera)
        except IntrinsicsError as exc:
            raise CameraError(f"{where}: image {name!r}: {exc}") from None
        obs = image_observations(image, camera, rec.points3D)
        keep = usable_observations(obs, camera.height, camera.width, min_track_length, max_reproj_error)
        sparse = np.stack([obs.rows[keep], obs.cols[keep], obs.z[keep]], axis=1).astype(np.float64)
        views.append(CameraView(name, intr, pose_inverse(image.cam_from_world().matrix()), sparse.reshape(-1, 3)))
    return sorted(views, key=lambda v: v.name)


def parse_transforms(data: bytes | str, where: str, error: type[Exception] = CameraError) -> dict[str, Any]:
    """The content of a ``transforms.json``; it must be a JSON object with a non-empty
    ``frames`` list, else ``error`` naming ``where``."""
    try:
        transforms = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"cannot read {where}: {exc}") from None
    frames = transforms.get("frames") if isinstance(transforms, dict) else None
    if not isinstance(frames, list) or not frames:
        raise error(f"{where}: no 'frames' list")
    return transforms


def _number(frame: dict[str, Any], transforms: dict[str, Any], key: str, where: str) -> float | None:
    value = frame.get(key, transforms.get(key))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CameraError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _frame_intrinsics(frame: dict[str, Any], transforms: dict[str, Any], where: str) -> Intrinsics:
    """nerfstudio / instant-ngp intrinsics of one frame (its own keys, else the file's)."""
    w, h = _number(frame, transforms, "w", where), _number(frame, transforms, "h", where)
    fx, fy = _number(frame, transforms, "fl_x", where), _number(frame, transforms, "fl_y", where)
    if fx is None:
        angle = _number(frame, transforms, "camera_angle_x", where)
        if angle is None or w is None:
            raise CameraError(f"{where}: no focal length (fl_x, or camera_angle_x with w)")
        fx = 0.5 * w / math.tan(0.5 * angle)
    fy = fy if fy is not None else fx
    cx, cy = _number(frame, transforms, "cx", where), _number(frame, transforms, "cy", where)
    if cx is None or cy is None:
        if w is None or h is None:
            raise CameraError(f"{where}: no principal point (cx, cy) and no image size (w, h)")
        cx, cy = (w / 2 if cx is None else cx), (h / 2 if cy is None else cy)
    for key in DISTORTION_KEYS:
        k = _number(frame, transforms, key, where)
        if k:
            raise CameraError(f"{where}: distortion {key}={k:g}; undistort the images first (pinhole cameras only)")
    size = (int(w), int(h)) if w is not None and h is not None else (None, None)
    try:
        return Intrinsics(fx, fy, cx - 0.5, cy - 0.5, *size)
    except IntrinsicsError as exc:
        raise CameraError(f"{where}: {exc}") from None


def transforms_views(transforms: dict[str, Any], where: str) -> list[CameraView]:
    """One view per frame of a parsed transforms file (:func:`parse_transforms`), in file
    order: ``name`` the frame's normalised ``file_path`` (checked), intrinsics, pose
    (``transform_matrix`` with OpenGL axes, flipped to OpenCV), and nerfstudio's
    ``depth_file_path`` with the file's ``depth_unit_scale_factor`` (default 1e-3)."""
    unit = transforms.get("depth_unit_scale_factor", DEFAULT_DEPTH_UNIT)
    if isinstance(unit, bool) or not isinstance(unit, (int, float)) or not unit > 0:
        raise CameraError(f"{where}: depth_unit_scale_factor must be a positive number, got {unit!r}")
    views = []
    for k, frame in enumerate(transforms["frames"]):
        at = f"{where}: frame {k}"
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise CameraError(f"{at}: no file_path")
        name = check_name(posixpath.normpath(frame["file_path"]), at, "file_path")
        pose = None
        if frame.get("transform_matrix") is not None:
            try:
                M = np.asarray(frame["transform_matrix"], dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise CameraError(f"{at}: transform_matrix is not numeric ({exc})") from None
            if M.shape == (3, 4):
                M = np.vstack([M, [0.0, 0.0, 0.0, 1.0]])
            if M.shape != (4, 4) or not np.all(np.isfinite(M)):
                raise CameraError(f"{at}: transform_matrix must be a finite 4x4 (or 3x4) matrix, got shape {M.shape}")
            pose = M @ OPENGL_FROM_OPENCV
        depth = frame.get("depth_file_path")
        if depth is not None:
            if not isinstance(depth, str):
                raise CameraError(f"{at}: depth_file_path must be a string")
            depth = check_name(posixpath.normpath(depth), at, "depth_file_path")
        views.append(CameraView(name, _frame_intrinsics(frame, transforms, at), pose, None, depth,
                                float(unit) if depth is not None else None))
    return views


__all__ = [
    "CameraError",
    "CameraView",
    "DEFAULT_DEPTH_UNIT",
    "OPENGL_FROM_OPENCV",
    "Observations",
    "PYCOLMAP_HINT",
    "colmap_views",
    "image_observations",
    "parse_transforms",
    "pose_inverse",
    "require_pycolmap",
    "transforms_views",
    "usable_observations",
]
