"""A self-contained capture folder (COLMAP model + transforms.json) from an RGB-D sequence.

``build_capture(OUT, data)`` turns an ``rgbd_sequence`` dataset (``color/`` + ``depth/`` in
uint16 mm, PrimeSense intrinsics, Redwood ``trajectory.log`` camera-to-world poses; e.g.
``../shared/data/rgbd_sequence_sample``) into what ``sddr colmap`` and ``sddr nerf`` take
as input, so both run without an SfM tool::

    images/<frame>.jpg              copies of the colour frames
    sparse/0/{cameras,images,points3D}.bin
                                    a COLMAP model written by pycolmap: one PINHOLE camera
                                    per distinct intrinsics (principal point + 0.5: COLMAP
                                    puts pixel centres at +0.5), images with
                                    cam_from_world = inverse of the given poses, and
                                    ``points`` 3-D points with tracks (below)
    gt_depth/<frame>.png            the EXACT depth (uint16 mm, copied): ground truth for
                                    the ``simulated`` predictor (``sddr colmap --gt-depth``)
                                    and for checking results. Not ``depth/``: that is where
                                    ``sddr nerf --format nerfstudio`` writes its depth PNGs
    transforms.json                 nerfstudio convention: fl_x, fl_y, cx, cy, w, h (pixel
                                    centres at +0.5, as COLMAP), camera_model OPENCV, frames
                                    with file_path ``images/<frame>.jpg`` and
                                    transform_matrix = camera-to-world with OpenGL camera
                                    axes (x right, y up, z backwards: the OpenCV pose times
                                    diag(1, -1, -1, 1)); world frame = the COLMAP model's
    capture.json                    provenance: source, seed, settings, per-frame counts

3-D points: the frames take turns; each draws random pixels with valid depth, back-projects
them (exact depth at the pixel centre) to the world, and projects them into every frame. An
observation is kept where the point lands inside the image, in front of the camera, and the
frame's own depth at the nearest pixel agrees with the point's depth within
``depth_tolerance`` (relative; visibility / occlusion check). Only points seen by at least
two frames are kept, until ``points`` are found. Keypoints are the exact projections (plus
optional Gaussian ``keypoint_noise`` in px). The result is deterministic for a seed.

The data is synthetic and its poses exact, so the model is metric (metres) and error-free:
it is for demonstrating and testing the COLMAP / NeRF integrations, not a benchmark of SfM.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sddr_pipeline.geometry.cameras import OPENGL_FROM_OPENCV, pose_inverse
from sddr_pipeline.io.atomic import atomic_write_json

GENERATOR = "sddr capture-sample"
DEFAULT_DATA = Path("../shared/data/rgbd_sequence_sample")


class CaptureError(ValueError):
    """The RGB-D sequence or the output folder cannot be used; the message says why."""


@dataclass
class CaptureReport:
    output: Path
    frames: list[str] = field(default_factory=list)
    points: int = 0
    observations: dict[str, int] = field(default_factory=dict)
    mean_track_length: float = 0.0


def default_data() -> Path:
    """``$SDDR_SHARED_DATA/rgbd_sequence_sample`` when that variable is set, else
    ``../shared/data/rgbd_sequence_sample`` (relative to the working folder)."""
    env = os.environ.get("SDDR_SHARED_DATA")
    return Path(env) / "rgbd_sequence_sample" if env else DEFAULT_DATA


def _orthonormal(R: np.ndarray) -> np.ndarray:
    """The nearest rotation matrix (poses read from text carry rounding)."""
    u, _, vt = np.linalg.svd(R)
    Q = u @ vt
    if np.linalg.det(Q) < 0:
        u[:, -1] *= -1
        Q = u @ vt
    return Q


@dataclass
class _Frame:
    name: str          # file name in images/, e.g. 00000.jpg
    stem: str
    colour: Path
    depth_file: Path
    depth: np.ndarray  # HxW float64 metres, 0 = invalid
    K: np.ndarray      # integer-pixel-centre convention
    c2w: np.ndarray    # 4x4, OpenCV camera axes
    w2c: np.ndarray


def _load_frames(data: Path) -> list[_Frame]:
    from sddr_pipeline.data import DatasetError, open_dataset

    if not data.is_dir():
        raise CaptureError(f"RGB-D sequence {data} does not exist (pass --data FOLDER with color/, depth/ and trajectory.log)")
    try:
        ds = open_dataset(data, layout="rgbd_sequence")
    except DatasetError as exc:
        raise CaptureError(str(exc)) from exc
    frames: list[_Frame] = []
    entries = ds._entries  # noqa: SLF001 - the depth file path is needed for an exact copy
    for entry, sample in zip(entries, ds):
        if sample.meta.get("pose") is None:
            raise CaptureError(f"{data}: frame {sample.name} has no pose (needs trajectory.log, Redwood format)")
        if sample.gt is None or entry.gt_source is None:
            raise CaptureError(f"{data}: frame {sample.name} has no depth")
        c2w = np.asarray(sample.meta["pose"], dtype=np.float64).copy()
        c2w[:3, :3] = _orthonormal(c2w[:3, :3])
        c2w[3] = (0.0, 0.0, 0.0, 1.0)
        name = sample.image_path.name
        frames.append(_Frame(name, Path(name).stem, sample.image_path, Path(entry.gt_source),
                             np.asarray(sample.gt, dtype=np.float64), np.asarray(sample.intrinsics, dtype=np.float64),
                             c2w, pose_inverse(c2w)))
    names = [f.name for f in frames]
    if len(set(names)) != len(names) or len({f.stem for f in frames}) != len(frames):
        raise CaptureError(f"{data}: colour frames share a file name or stem; cannot lay them out in one images/ folder")
    if len(frames) < 2:
        raise CaptureError(f"{data}: need at least 2 frames, found {len(frames)}")
    return frames


def _project(frame: _Frame, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) pixel coordinates (integer-centre convention) and (N,) camera depth of world points."""
    cam = X @ frame.w2c[:3, :3].T + frame.w2c[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = frame.K[0, 0] * cam[:, 0] / z + frame.K[0, 2]
        v = frame.K[1, 1] * cam[:, 1] / z + frame.K[1, 2]
    return np.stack([u, v], axis=1), z


def _visible(frame: _Frame, uv: np.ndarray, z: np.ndarray, tolerance: float) -> np.ndarray:
    h, w = frame.depth.shape
    ok = np.isfinite(uv).all(axis=1) & (z > 0)
    ui = np.where(ok, np.rint(uv[:, 0]), -1).astype(int)
    vi = np.where(ok, np.rint(uv[:, 1]), -1).astype(int)
    ok &= (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    # the keypoint itself (not only its nearest pixel) inside the image, as sddr colmap requires
    ok &= (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
    seen = np.zeros(len(z), dtype=bool)
    d = frame.depth[vi[ok], ui[ok]]
    seen[ok] = (d > 0) & (np.abs(d - z[ok]) <= tolerance * z[ok])
    return seen


def _draw_points(frames: list[_Frame], n_points: int, rng: np.random.Generator, tolerance: float):
    """World points, their source colours and per-frame visibility (points seen by >= 2 frames)."""
    quotas = [n_points // len(frames) + (1 if i < n_points % len(frames) else 0) for i in range(len(frames))]
    xyz, src, pix, vis_all, uv_all = [], [], [], [], []
    for i, (frame, quota) in enumerate(zip(frames, quotas)):
        if quota == 0:
            continue
        vv, uu = np.nonzero(frame.depth > 0)
        if len(uu) == 0:
            raise CaptureError(f"frame {frame.name} has no valid depth")
        order = rng.permutation(len(uu))
        taken = 0
        for start in range(0, len(order), max(4 * quota, 256)):
            pick = order[start:start + max(4 * quota, 256)]
            u, v = uu[pick].astype(np.float64), vv[pick].astype(np.float64)
            z = frame.depth[vv[pick], uu[pick]]
            cam = np.stack([(u - frame.K[0, 2]) / frame.K[0, 0] * z, (v - frame.K[1, 2]) / frame.K[1, 1] * z, z], axis=1)
            X = cam @ frame.c2w[:3, :3].T + frame.c2w[:3, 3]
            uvs, vis = [], []
            for j, other in enumerate(frames):
                if j == i:
                    uvs.append(np.stack([u, v], axis=1))
                    vis.append(np.ones(len(u), dtype=bool))
                    continue
                p, zj = _project(other, X)
                uvs.append(p)
                vis.append(_visible(other, p, zj, tolerance))
            vis_a = np.stack(vis, axis=1)
            keep = np.flatnonzero(vis_a.sum(axis=1) >= 2)[: quota - taken]
            xyz.append(X[keep])
            src.append(np.full(len(keep), i))
            pix.append(np.stack([vv[pick][keep], uu[pick][keep]], axis=1))
            vis_all.append(vis_a[keep])
            uv_all.append(np.stack(uvs, axis=1)[keep])
            taken += len(keep)
            if taken >= quota:
                break
    if not xyz:
        raise CaptureError("no 3-D points found")
    return (np.concatenate(xyz), np.concatenate(src), np.concatenate(pix),
            np.concatenate(vis_all), np.concatenate(uv_all))


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CaptureError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CaptureError(f"output {out} already exists and is not empty; choose a new folder or pass --overwrite")
        try:
            made_by = json.loads((out / "capture.json").read_text(encoding="utf-8")).get("generator")
        except (OSError, ValueError):
            made_by = None
        if made_by != GENERATOR:
            raise CaptureError(f"--overwrite refused: {out} is not a capture folder written by `{GENERATOR}` "
                               "(no capture.json of ours); remove it yourself or choose a new folder")


def _camera_key(frame: _Frame) -> tuple:
    """Frames with the same image size and intrinsics share one COLMAP camera."""
    h, w = frame.depth.shape
    return (w, h, *np.round(frame.K[[0, 1, 0, 1], [0, 1, 2, 2]], 9))


def _colmap_model(frames: list[_Frame], uv: np.ndarray, vis: np.ndarray, pycolmap: Any) -> Any:
    """A ``pycolmap.Reconstruction`` with one PINHOLE camera per distinct intrinsics
    (principal point + 0.5: COLMAP's pixel centres) and an image per frame whose keypoints
    are the projections ``uv`` of the points it sees (``vis``); no 3-D points yet."""
    rec = pycolmap.Reconstruction()
    camera_ids: dict[tuple, int] = {}
    for f in frames:
        key = _camera_key(f)
        if key not in camera_ids:
            h, w = f.depth.shape
            cam = pycolmap.Camera.create_from_model_name(len(camera_ids) + 1, "PINHOLE", float(f.K[0, 0]), w, h)
            cam.params = [f.K[0, 0], f.K[1, 1], f.K[0, 2] + 0.5, f.K[1, 2] + 0.5]
            rec.add_camera_with_trivial_rig(cam)
            camera_ids[key] = cam.camera_id
    for i, f in enumerate(frames):
        keypoints = uv[vis[:, i], i] + 0.5  # COLMAP: pixel centres at +0.5
        img = pycolmap.Image(name=f.name, keypoints=np.asarray(keypoints, dtype=np.float64).reshape(-1, 2),
                             camera_id=camera_ids[_camera_key(f)], image_id=i + 1)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(f.w2c[:3]))
    return rec


def _add_points(rec: Any, frames: list[_Frame], xyz: np.ndarray, src: np.ndarray, pix: np.ndarray,
                vis: np.ndarray, pycolmap: Any) -> None:
    """Add the 3-D points to ``rec``: colour from the pixel of the frame that drew each,
    track = the frames that see it, then the reprojection errors."""
    from sddr_pipeline.data import read_image

    index = np.cumsum(vis, axis=0) - 1  # keypoint index of point p in frame i: its rank among the points i sees
    colours = {}
    for p in range(len(xyz)):
        i = int(src[p])
        if i not in colours:
            colours[i] = read_image(frames[i].colour)
        rgb = colours[i][pix[p, 0], pix[p, 1], :3].astype(np.uint8)
        track = pycolmap.Track([pycolmap.TrackElement(j + 1, int(index[p, j])) for j in np.flatnonzero(vis[p])])
        rec.add_point3D(xyz[p], track, rgb)
    rec.update_point_3d_errors()


def _copy_frames(frames: list[_Frame], folder: Path) -> None:
    """The colour frames to ``images/`` and their exact depth PNGs to ``gt_depth/``."""
    (folder / "images").mkdir()
    (folder / "gt_depth").mkdir()
    for f in frames:
        shutil.copyfile(f.colour, folder / "images" / f.name)
        shutil.copyfile(f.depth_file, folder / "gt_depth" / f"{f.stem}.png")


def _transforms(frames: list[_Frame]) -> dict[str, Any]:
    """The nerfstudio ``transforms.json`` of the frames (module docstring): shared
    intrinsics at the top level when every frame has the same, else per frame."""
    h, w = frames[0].depth.shape
    K0 = frames[0].K
    same = all(np.allclose(f.K, K0) and f.depth.shape == (h, w) for f in frames)
    transforms: dict[str, Any] = {"camera_model": "OPENCV"}
    if same:
        transforms.update(fl_x=float(K0[0, 0]), fl_y=float(K0[1, 1]), cx=float(K0[0, 2] + 0.5), cy=float(K0[1, 2] + 0.5), w=w, h=h)
    transforms["frames"] = []
    for f in frames:
        frame: dict[str, Any] = {"file_path": f"images/{f.name}"}
        if not same:
            fh, fw = f.depth.shape
            frame.update(fl_x=float(f.K[0, 0]), fl_y=float(f.K[1, 1]), cx=float(f.K[0, 2] + 0.5),
                         cy=float(f.K[1, 2] + 0.5), w=fw, h=fh)
        frame["transform_matrix"] = (f.c2w @ OPENGL_FROM_OPENCV).tolist()
        transforms["frames"].append(frame)
    return transforms


def _provenance(report: CaptureReport, data: Path, seed: int, points: int, keypoint_noise: float,
                depth_tolerance: float) -> dict[str, Any]:
    """The content of ``capture.json``: what the folder was built from and how; its
    ``generator`` marks the folder as one ``--overwrite`` may replace."""
    return {
        "generator": GENERATOR,
        "source": str(data.resolve()),
        "seed": seed,
        "points": report.points,
        "points_requested": points,
        "keypoint_noise_px": keypoint_noise,
        "depth_tolerance": depth_tolerance,
        "units": "m",
        "gt_depth": {"folder": "gt_depth", "format": "uint16 PNG, millimetres, 0 = invalid",
                     "note": "exact depth: ground truth for the simulated predictor (sddr colmap --gt-depth) and checks"},
        "transforms": {"convention": "nerfstudio", "camera_axes": "OpenGL (x right, y up, z backwards)",
                       "world": "the COLMAP model's world frame"},
        "observations": report.observations,
        "mean_track_length": round(report.mean_track_length, 3),
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``, replacing an earlier capture there
    (:func:`_check_output` made sure it is one) or an empty folder."""
    if out.is_dir():
        if any(out.iterdir()):
            shutil.rmtree(out)
        else:
            out.rmdir()
    os.replace(tmp, out)


def build_capture(
    output: str | Path,
    data: str | Path | None = None,
    *,
    points: int = 600,
    seed: int = 0,
    keypoint_noise: float = 0.0,
    depth_tolerance: float = 0.01,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> CaptureReport:
    """Write the capture folder (module docstring) for the RGB-D sequence ``data``.

    ``points``: 3-D points in the model (each seen by >= 2 frames); ``seed``: the random
    pixels and keypoint noise; ``keypoint_noise``: px standard deviation added to the
    observed keypoints (0: exact projections); ``depth_tolerance``: relative depth
    agreement for an observation to count as visible. A non-empty ``output`` is refused
    unless ``overwrite`` and it is a capture folder this function wrote (then it is
    replaced whole, derived outputs such as ``sddr/`` included). The folder is built under
    a temporary name beside ``output`` and renamed into place, so a failure leaves nothing.
    """
    from sddr_pipeline.geometry.cameras import require_pycolmap

    pycolmap = require_pycolmap()
    if points < 1:
        raise CaptureError(f"points must be positive, got {points}")
    if keypoint_noise < 0 or not 0 < depth_tolerance < 1:
        raise CaptureError("keypoint_noise must be >= 0 and depth_tolerance in (0, 1)")
    say = progress or (lambda msg: None)
    data = Path(data) if data is not None else default_data()
    out = Path(output)
    _check_output(out, overwrite)
    frames = _load_frames(data)
    rng = np.random.default_rng(seed)
    say(f"{len(frames)} frames from {data}; drawing {points} points")
    xyz, src, pix, vis, uv = _draw_points(frames, points, rng, depth_tolerance)
    if keypoint_noise > 0:
        uv = uv + rng.normal(0.0, keypoint_noise, uv.shape)

    tmp = out.parent / f".tmp-{uuid.uuid4().hex[:8]}-{out.name}"
    tmp.mkdir(parents=True)
    try:
        rec = _colmap_model(frames, uv, vis, pycolmap)
        _add_points(rec, frames, xyz, src, pix, vis, pycolmap)
        sparse = tmp / "sparse" / "0"
        sparse.mkdir(parents=True)
        rec.write(str(sparse))
        _copy_frames(frames, tmp)
        atomic_write_json(tmp / "transforms.json", _transforms(frames))
        report = CaptureReport(out, [f.name for f in frames], int(len(xyz)),
                               {f.name: int(vis[:, i].sum()) for i, f in enumerate(frames)},
                               float(vis.sum() / max(len(xyz), 1)))
        atomic_write_json(tmp / "capture.json", _provenance(report, data, seed, points, keypoint_noise, depth_tolerance))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"{report.points} points, mean track length {report.mean_track_length:.2f}")
    return report


# ------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``sddr capture-sample OUT [--data DIR] [--points N] [--seed S] [--overwrite]``."""
    p.description = ("Build OUT/images, OUT/sparse/0 (COLMAP model with points and tracks), OUT/gt_depth (exact depth, "
                     "uint16 mm: ground truth for `sddr colmap --predictor simulated --gt-depth OUT/gt_depth`) and "
                     "OUT/transforms.json (nerfstudio) from an rgbd_sequence dataset with poses.")
    p.add_argument("output", type=Path, help="new capture folder (refused when not empty, unless --overwrite)")
    p.add_argument("--data", type=Path, default=None,
                   help="rgbd_sequence folder: color/, depth/ (uint16 mm), trajectory.log "
                        "(default: $SDDR_SHARED_DATA/rgbd_sequence_sample, else ../shared/data/rgbd_sequence_sample)")
    p.add_argument("--points", type=int, default=600, help="3-D points in the model, each seen by >= 2 frames (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random pixels / keypoint noise (default: %(default)s)")
    p.add_argument("--keypoint-noise", type=float, default=0.0, help="Gaussian keypoint noise in px (default: %(default)s, exact)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it is an earlier capture-sample folder")
    p.set_defaults(func=cli)


def cli(args: argparse.Namespace) -> int:
    """Entry point of ``sddr capture-sample``."""
    try:
        report = build_capture(args.output, args.data, points=args.points, seed=args.seed,
                               keypoint_noise=args.keypoint_noise, overwrite=args.overwrite)
    except (CaptureError, ImportError, OSError) as exc:
        print(f"sddr capture-sample: {exc}", file=sys.stderr)
        return 2
    obs = ", ".join(f"{n} {c}" for n, c in report.observations.items())
    print(f"sddr capture-sample: {len(report.frames)} images, {report.points} points "
          f"(mean track length {report.mean_track_length:.2f}; observations {obs}) -> {report.output}")
    return 0


__all__ = ["CaptureError", "CaptureReport", "add_arguments", "build_capture", "cli", "default_data"]
