"""COLMAP plugin on a synthetic scene of exactly known depth, built as a real pycolmap model.

The scene (a back wall, a floor, a fronto-parallel card and a slanted card, textured in
world coordinates) is ray-cast analytically through each COLMAP camera model, so the
ground-truth depth of any view, distorted or undistorted, is exact.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pycolmap = pytest.importorskip("pycolmap")
pytest.importorskip("open3d")

from PIL import Image  # noqa: E402

from sddr_pipeline.data import read_image  # noqa: E402
from sddr_pipeline.geometry.intrinsics import Intrinsics, intrinsics_from_colmap  # noqa: E402
from sddr_pipeline.geometry.pointcloud import read_ply  # noqa: E402
from sddr_pipeline.models import Refiner  # noqa: E402
from sddr_pipeline.plugins.colmap import (  # noqa: E402
    ColmapError,
    apply_alignment,
    encode_inverse_depth_png,
    fit_alignment,
    flag_scale_outliers,
    read_colmap_depth,
    run_colmap,
    sample_bilinear,
    write_colmap_depth,
)
from sddr_pipeline.plugins.nerf import export_nerf, read_confidence_png  # noqa: E402
from sddr_pipeline.predictors import get_predictor  # noqa: E402
from sddr_pipeline.predictors.base import SampleContext  # noqa: E402

# (point on plane, normal, in-plane axes u and v, half extents along u and v or None)
_S = 1 / np.sqrt(2)
PLANES = [
    (np.array([0.0, 0.0, 6.0]), np.array([0.0, 0.0, -1.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), None),
    (np.array([0.0, 1.2, 0.0]), np.array([0.0, -1.0, 0.0]), np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), None),
    (np.array([-0.5, 0.3, 3.2]), np.array([0.0, 0.0, -1.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.6, 0.9)),
    (np.array([1.0, 0.2, 4.0]), np.array([-_S, 0.0, -_S]), np.array([_S, 0, -_S]), np.array([0, 1.0, 0]), (0.5, 1.0)),
]


def raycast(origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Ray parameter t of the first hit (hit = origin + t * dir), inf where nothing is hit."""
    best = np.full(len(dirs), np.inf)
    for p, n, u, v, ext in PLANES:
        den = dirs @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((p - origin) @ n) / den
        ok = np.isfinite(t) & (t > 1e-6)
        if ext is not None:
            d = origin + t[:, None] * dirs - p
            ok &= (np.abs(d @ u) <= ext[0]) & (np.abs(d @ v) <= ext[1])
        best = np.where(ok & (t < best), t, best)
    return best


def distance_to_scene(points: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest scene surface (finite planes as rectangles)."""
    out = np.full(len(points), np.inf)
    for p, n, u, v, ext in PLANES:
        d = points - p
        normal = np.abs(d @ n)
        if ext is None:
            dist = normal
        else:
            du = np.maximum(np.abs(d @ u) - ext[0], 0)
            dv = np.maximum(np.abs(d @ v) - ext[1], 0)
            dist = np.sqrt(normal**2 + du**2 + dv**2)
        out = np.minimum(out, dist)
    return out


def texture(X: np.ndarray) -> np.ndarray:
    s = np.sin(X[:, 0] * 9.0) * np.sin(X[:, 1] * 7.0 + X[:, 2] * 5.0)
    c = (np.floor(X[:, 0] * 4) + np.floor(X[:, 1] * 4) + np.floor(X[:, 2] * 4)) % 2
    g = 0.35 + 0.25 * s + 0.3 * c
    return np.stack([g, 0.6 * g + 0.2 * np.sin(X[:, 2] * 3) ** 2, 1 - g], axis=1)


def look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """3x4 cam_from_world for a camera at ``center`` looking at ``target`` (y down)."""
    z = (target - center) / np.linalg.norm(target - center)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    x = -x if x[0] < 0 else x
    R = np.stack([x, np.cross(z, x), z])
    return np.concatenate([R, (-R @ center)[:, None]], axis=1)


def render(camera, cam_from_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact RGB and z-depth of a view through any COLMAP camera model."""
    h, w = camera.height, camera.width
    uu, vv = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xy = camera.cam_from_img(np.stack([uu.ravel(), vv.ravel()], axis=1))
    rays = np.concatenate([xy, np.ones((len(xy), 1))], axis=1)
    R, t = cam_from_world[:, :3], cam_from_world[:, 3]
    centre = -R.T @ t
    dirs = rays @ R
    z = raycast(centre, dirs)  # the camera-frame ray has z = 1, so t is the z-depth
    rgb = np.clip(texture(centre + z[:, None] * dirs), 0, 1)
    return (rgb.reshape(h, w, 3) * 255).astype(np.uint8), z.reshape(h, w)


def build_workspace(root: Path, model: str = "PINHOLE", n_views: int = 4, seed: int = 0,
                    starved: str | None = None) -> dict[str, np.ndarray]:
    """Write images/ and sparse/0 of a synthetic capture; returns the views' poses.

    Tracks come from ray-casting random pixels of each view and projecting the 3-D
    point into every view where it is visible (keypoint noise 0.3 px); 5 % of the points
    get a 15 px error in one observation. ``starved`` names a view left with 5 points.
    """
    rng = np.random.default_rng(seed)
    w, h, f = 160, 120, 150.0
    camera = pycolmap.Camera.create_from_model_name(1, model, f, w, h)
    if model == "SIMPLE_RADIAL":
        camera.params = [f, w / 2, h / 2, -0.08]
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(camera)
    (root / "images").mkdir(parents=True)
    poses, names = {}, []
    for i in range(n_views):
        name = f"view_{i:02d}.png"
        P = look_at(np.array([-0.6 + 1.2 * i / max(n_views - 1, 1), -0.1 * i, 0.0]), np.array([0.0, 0.4, 5.0]))
        rgb, _ = render(camera, P)
        Image.fromarray(rgb).save(root / "images" / name)
        poses[name] = P
        names.append(name)
    keypoints: dict[int, list[np.ndarray]] = {i: [] for i in range(n_views)}
    tracks: list[tuple[np.ndarray, list[tuple[int, int]]]] = []
    for i, name in enumerate(names):
        P = poses[name]
        R, t = P[:, :3], P[:, 3]
        px = np.stack([rng.uniform(4, w - 4, 120), rng.uniform(4, h - 4, 120)], axis=1)
        rays = np.concatenate([camera.cam_from_img(px), np.ones((len(px), 1))], axis=1) @ R
        z = raycast(-R.T @ t, rays)
        for X in (-R.T @ t) + z[:, None] * rays:
            obs = []
            for j, other in enumerate(names):
                Q = poses[other]
                Xc = Q[:, :3] @ X + Q[:, 3]
                if Xc[2] <= 0:
                    continue
                uv = camera.img_from_cam(Xc[None])[0]
                if not (2 <= uv[0] <= w - 2 and 2 <= uv[1] <= h - 2):
                    continue
                ray = np.append(camera.cam_from_img(uv[None])[0], 1.0) @ Q[:, :3]
                if abs(raycast(-Q[:, :3].T @ Q[:, 3], ray[None])[0] - Xc[2]) > 1e-3 * Xc[2]:
                    continue  # occluded in this view
                obs.append((j, uv + rng.normal(0, 0.3, 2)))
            if len(obs) >= 2:
                if rng.random() < 0.05:
                    obs[0] = (obs[0][0], obs[0][1] + 15.0)
                elems = []
                for j, uv in obs:
                    keypoints[j].append(uv)
                    elems.append((j, len(keypoints[j]) - 1))
                tracks.append((X, elems))
    for i, name in enumerate(names):
        kp = np.asarray(keypoints[i]) if keypoints[i] else np.zeros((0, 2))
        image = pycolmap.Image(name=name, keypoints=kp, camera_id=1, image_id=i + 1)
        P = poses[name]
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(P))
    starved_id = names.index(starved) + 1 if starved else None
    kept_for_starved = 0
    for X, elems in tracks:
        if starved_id is not None and any(j + 1 == starved_id for j, _ in elems):
            kept_for_starved += 1
            if kept_for_starved > 5:
                elems = [(j, k) for j, k in elems if j + 1 != starved_id]
                if len(elems) < 2:
                    continue
        track = pycolmap.Track([pycolmap.TrackElement(j + 1, k) for j, k in elems])
        rec.add_point3D(X, track, np.array([128, 128, 128], dtype=np.uint8))
    rec.update_point_3d_errors()
    (root / "sparse" / "0").mkdir(parents=True)
    rec.write(str(root / "sparse" / "0"))
    return poses


def gt_context(view) -> SampleContext:
    """Ground truth for the simulated predictor: the exact depth of the view as refined."""
    _, depth = render(view.camera, view.cam_from_world)
    return SampleContext(name=view.name, gt=depth.astype(np.float32), gt_kind="depth")


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: oversubscribed threads are ~50x slower
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tools():
    return get_predictor("simulated:low=64,high=160"), Refiner.from_config("sddr-small")


def _depth_errors(out: Path, report) -> list[float]:
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    rel = []
    for image in rec.images.values():
        if image.name not in report.included:
            continue
        dm = pycolmap.DepthMap()
        dm.read(str(out / "stereo" / "depth_maps" / f"{image.name}.geometric.bin"))
        est = dm.to_array()
        _, gt = render(rec.cameras[image.camera_id], image.cam_from_world().matrix())
        valid = est > 0
        assert valid.mean() > 0.9
        rel.append(np.abs(est[valid] - gt[valid]) / gt[valid])
    return rel


def test_colmap_pinhole_recovers_known_depth(tmp_path, tools):
    ws = tmp_path / "ws"
    build_workspace(ws, "PINHOLE", starved="view_03.png")
    before = _digest(ws)
    predictor, refiner = tools
    report = run_colmap(ws, predictor, refiner, context_fn=gt_context)
    out = ws / "sddr"
    assert _digest(ws / "images") == {k[len("images/"):]: v for k, v in before.items() if k.startswith("images/")}
    assert {k: v for k, v in _digest(ws).items() if not k.startswith("sddr/")} == before  # COLMAP's files untouched
    assert not report.undistorted
    assert report.excluded.keys() == {"view_03.png"} and "too_few_points" in report.excluded["view_03.png"]
    rel = np.concatenate(_depth_errors(out, report))
    median = float(np.median(rel))
    print(f"\nCOLMAP PINHOLE: median relative depth error {median:.4f} over {rel.size} px of {len(report.included)} maps")
    assert median < 0.05

    params = json.loads((out / "sparse" / "0" / "depth_params.json").read_text())
    assert set(params) == {"view_00", "view_01", "view_02", "view_03"}
    assert params["view_03"] == {"scale": 0.0, "offset": 0.0}  # 3DGS masks scale-0 maps out
    png = np.asarray(Image.open(out / "depths" / "view_01.png")).astype(np.float64)
    inv = png / 2**16 * params["view_01"]["scale"] + params["view_01"]["offset"]  # as 3DGS decodes it
    depth = read_colmap_depth(out / "stereo" / "depth_maps" / "view_01.png.geometric.bin")
    ok = depth > 0
    np.testing.assert_allclose(inv[ok], 1 / depth[ok], rtol=2e-3)
    assert not (out / "stereo" / "depth_maps" / "view_03.png.geometric.bin").exists()

    alignment = json.loads((out / "alignment.json").read_text())
    entry = alignment["images"]["view_00.png"]
    assert entry["status"] == "ok" and entry["usable"] < entry["observations"]  # the 15 px outliers were filtered
    assert entry["alignment"]["median_rel_error"] < 0.05
    conf = np.load(out / "confidence" / "view_00.npy")
    assert conf.shape == (120, 160) and 0 <= conf.min() and conf.max() <= 1

    cloud = read_ply(out / "fused.ply")
    assert len(cloud) > 1000 and cloud.colors is not None
    assert np.median(distance_to_scene(cloud.points.astype(np.float64))) < 0.1
    assert (out / "images" / "view_00.png").exists()

    # the COLMAP output feeds the NeRF exporter (depth in the model's units)
    frames = [{"file_path": f"images/{n}", "transform_matrix": np.eye(4).tolist()} for n in sorted(report.included)]
    (out / "transforms.json").write_text(json.dumps({"frames": frames}))
    export_nerf(out / "transforms.json", out, "nerfstudio")
    exported = json.loads((out / "transforms_depth.json").read_text())["frames"][1]
    with Image.open(out / exported["depth_file_path"]) as im:
        mm = np.asarray(im).astype(np.float64)
    np.testing.assert_allclose(mm * 1e-3, depth, atol=5e-4 + 1e-9)
    report_conf = export_nerf(out / "transforms.json", out, "nerfstudio", out / "weighted.json", confidence=True)
    assert len(report_conf.confidence) == len(report.included)
    weighted = {Path(f["file_path"]).stem: f for f in json.loads((out / "weighted.json").read_text())["frames"]}
    weight = read_confidence_png(out / weighted["view_00"]["depth_confidence_path"])
    ok = weight > 0
    assert weight.shape == conf.shape and ok.mean() > 0.5
    np.testing.assert_allclose(weight[ok], conf[ok], atol=0.5 / 65535 + 1e-7)


def test_colmap_undistorts_simple_radial(tmp_path, tools):
    ws = tmp_path / "ws"
    build_workspace(ws, "SIMPLE_RADIAL", n_views=3, seed=1)
    predictor, refiner = tools
    report = run_colmap(ws, predictor, refiner, tmp_path / "out", context_fn=gt_context)
    out = tmp_path / "out"
    assert report.undistorted and not report.excluded
    cams = pycolmap.Reconstruction(str(out / "sparse" / "0")).cameras
    assert {c.model.name for c in cams.values()} == {"PINHOLE"}
    rel = np.concatenate(_depth_errors(out, report))
    median = float(np.median(rel))
    print(f"\nCOLMAP SIMPLE_RADIAL (undistorted): median relative depth error {median:.4f} over {rel.size} px")
    assert median < 0.05
    image = read_image(out / "images" / "view_00.png")
    cam = next(iter(cams.values()))
    assert image.shape[:2] == (cam.height, cam.width)


def test_output_never_inside_colmap_files(tmp_path, tools):
    ws = tmp_path / "ws"
    build_workspace(ws, "PINHOLE", n_views=2)
    predictor, refiner = tools
    for bad in (ws, ws / "sparse" / "0" / "x", ws / "images" / "x"):
        with pytest.raises(ColmapError):
            run_colmap(ws, predictor, refiner, bad)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(ColmapError, match="not empty"):
        run_colmap(ws, predictor, refiner, tmp_path / "full")

    class Broken:
        name, kind, default_resolutions = "broken", predictor.kind, predictor.default_resolutions

        def predict(self, image, resolution, context=None):
            raise RuntimeError("model exploded")

    with pytest.raises(Exception, match="model exploded"):
        run_colmap(ws, Broken(), refiner, tmp_path / "failed")
    assert not (tmp_path / "failed").exists()  # nothing half-written is left behind


def test_scale_outlier_rules():
    scales = {"a": 1.0, "b": 1.1, "c": 0.9, "d": 1.05, "e": 7.0, "f": 0.1}
    flagged, med = flag_scale_outliers(scales, "ratio")
    assert set(flagged) == {"e", "f"} and med == pytest.approx(1.025)
    flagged, _ = flag_scale_outliers(scales, "mad")
    assert set(flagged) == {"e", "f"}
    assert flag_scale_outliers({"a": 1.0, "b": 1.0, "c": 1.01}, "mad")[0] == {}


def test_scale_outlier_map_is_excluded_end_to_end(tmp_path, tools):
    """A predictor hot pixel squashes one map's range: its fitted scale explodes and the
    map is excluded, not used."""
    ws = tmp_path / "ws"
    build_workspace(ws, "PINHOLE", n_views=4, seed=2)
    predictor, refiner = tools

    class HotPixel:
        name, kind, default_resolutions = "hot-pixel", predictor.kind, predictor.default_resolutions

        def predict(self, image, resolution, context=None):
            out = predictor.predict(image, resolution, context)
            if context is not None and context.name == "view_02.png":
                out = out.copy()
                out[:2, :2] = out.max() * 200
            return out

        def predict_batch(self, images, resolution, contexts=None):
            return [self.predict(im, resolution, c) for im, c in zip(images, contexts or [None] * len(images))]

    report = run_colmap(ws, HotPixel(), refiner, tmp_path / "out", context_fn=gt_context)
    assert "view_02.png" in report.excluded
    assert "scale_outlier" in report.excluded["view_02.png"] or "poor_fit" in report.excluded["view_02.png"]
    assert len(report.included) == 3


def test_alignment_numerics_recover_exact_affine():
    rng = np.random.default_rng(0)
    z = rng.uniform(1, 8, 200)
    src = (1 / z - 0.05) / 0.4  # 1/z = 0.4 * src + 0.05
    src[:10] += 1.0  # gross outliers
    fit = fit_alignment(src, z, "inverse")
    assert fit.scale == pytest.approx(0.4, rel=1e-3) and fit.offset == pytest.approx(0.05, abs=1e-4)
    assert fit.inlier_fraction >= 0.94
    np.testing.assert_allclose(apply_alignment(src[10:], fit.scale, fit.offset, "inverse"), z[10:], rtol=1e-3)
    fit_d = fit_alignment(2 * z + 1, z, "depth")
    assert fit_d.scale == pytest.approx(0.5) and fit_d.offset == pytest.approx(-0.5)


def test_colmap_depth_file_roundtrip(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) + 0.5
    write_colmap_depth(tmp_path / "a.geometric.bin", depth)
    assert (tmp_path / "a.geometric.bin").read_bytes().startswith(b"4&3&1&")
    np.testing.assert_array_equal(read_colmap_depth(tmp_path / "a.geometric.bin"), depth)
    dm = pycolmap.DepthMap()
    dm.read(str(tmp_path / "a.geometric.bin"))
    np.testing.assert_array_equal(dm.to_array(), depth)
    png, scale, offset = encode_inverse_depth_png(np.array([[1.0, 2.0], [0.0, 4.0]]))
    inv = png / 2**16 * scale + offset
    np.testing.assert_allclose(inv, [[1.0, 0.5], [0.0, 0.25]], atol=1e-4)


def test_bilinear_and_colmap_intrinsics():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_allclose(sample_bilinear(a, np.array([0.5, 0.0]), np.array([0.5, 1.0])), [1.5, 1.0])
    cam = pycolmap.Camera.create_from_model_name(1, "PINHOLE", 100.0, 64, 48)
    intr = intrinsics_from_colmap(cam)
    assert intr == Intrinsics(100.0, 100.0, 31.5, 23.5, 64, 48)  # COLMAP centre (32, 24) -> integer-centre convention
    radial = pycolmap.Camera.create_from_model_name(2, "SIMPLE_RADIAL", 100.0, 64, 48)
    with pytest.raises(ValueError, match="undistort"):
        intrinsics_from_colmap(radial)
