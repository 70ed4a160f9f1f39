"""TSDF fusion on the real RGB-D sample sequence (exact depth, poses, PrimeSense K)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("open3d")

from sddr_pipeline.batch import refine_folder  # noqa: E402
from sddr_pipeline.data import open_dataset  # noqa: E402
from sddr_pipeline.geometry import Frame, Intrinsics, compare_surfaces, evaluate_rgbd_fusion, fuse_tsdf  # noqa: E402
from sddr_pipeline.geometry.intrinsics import intrinsics_from_sample  # noqa: E402
from sddr_pipeline.models import Refiner  # noqa: E402
from sddr_pipeline.predictors import get_predictor  # noqa: E402
from test_geometry import GroundTruthMetric  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sequence(shared_data):
    root = shared_data / "rgbd_sequence_sample"
    return root, open_dataset(root, layout="rgbd_sequence")


@pytest.fixture(scope="module")
def reference(sequence):
    _, ds = sequence
    frames = [Frame(s.gt, s.meta["pose"], s.image(), intrinsics_from_sample(s), s.name) for s in ds]
    return fuse_tsdf(frames, voxel=0.01, depth_max=4.0)


def test_fused_exact_depth_reproduces_every_frame(sequence, reference):
    """The reference surface seen from each camera lies where that frame's depth says:
    poses are camera-to-world and integration takes their inverse."""
    _, ds = sequence
    V = np.asarray(reference.vertices)
    assert len(V) > 20_000 and reference.has_vertex_colors()
    for s in (ds[0], ds[4]):
        K = s.intrinsics
        cam = (V - s.meta["pose"][:3, 3]) @ s.meta["pose"][:3, :3]  # world -> camera with R^T
        z = cam[:, 2]
        front = z > 0.1
        u = np.rint(K[0, 0] * cam[front, 0] / z[front] + K[0, 2]).astype(int)
        v = np.rint(K[1, 1] * cam[front, 1] / z[front] + K[1, 2]).astype(int)
        inside = (u >= 0) & (u < 640) & (v >= 0) & (v < 480)
        gt = s.gt[v[inside], u[inside]]
        ok = gt > 0
        diff = np.abs(z[front][inside][ok] - gt[ok])
        assert inside.sum() > 10_000
        assert np.median(diff) < 0.01  # one voxel; occluded vertices make the tail


def test_compare_surfaces_measures_a_known_offset():
    import open3d as o3d

    plane = o3d.geometry.TriangleMesh.create_box(1.0, 1.0, 1e-6)
    shifted = o3d.geometry.TriangleMesh(plane)
    shifted.translate((0.0, 0.0, 0.01))
    m = compare_surfaces(shifted, plane, n_samples=5000)
    assert m["accuracy_median"] == pytest.approx(0.01, abs=1e-4)
    assert m["chamfer"] == pytest.approx(0.01, abs=2e-4)
    assert m["fscore"] == 1.0 and compare_surfaces(shifted, plane, n_samples=5000, tau=0.005)["fscore"] == 0.0


def test_refined_simulated_fusion_is_close_to_the_reference(sequence):
    root, _ = sequence
    ev = evaluate_rgbd_fusion(root, get_predictor("simulated:low=160,high=480"), Refiner.from_config("sddr-small"),
                              low_res=160, high_res=480, frames=3, n_samples=20_000)
    m = ev.metrics["refined"]
    print("\nTSDF refined vs reference (m):", json.dumps({k: round(v, 4) for k, v in m.items()}))
    print("TSDF high-res prediction vs reference (m):", json.dumps({k: round(v, 4) for k, v in ev.metrics["high"].items()}))
    assert len(ev.depth_errors["refined"]) == 3
    assert max(ev.depth_errors["refined"]) < 0.05  # median |d - gt| / gt per frame after 200-point scaling
    assert m["accuracy_median"] < 0.03 and m["completeness_median"] < 0.03 and m["chamfer"] < 0.05
    assert m["accuracy_median"] < ev.metrics["high"]["accuracy_median"]


def test_fuse_command_on_a_metric_refine_output(sequence, reference, tmp_path):
    from sddr_pipeline.plugins import add_arguments

    root, ds = sequence
    out = tmp_path / "refined"
    assert refine_folder(root, out, GroundTruthMetric(), Refiner.from_config("sddr-small"), progress=False).ok
    parser = argparse.ArgumentParser()
    add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fuse", str(out), "--output", str(tmp_path / "mesh.ply"), "--voxel", "0.02"])
    assert args.func(args) == 0  # poses and intrinsics from the refined dataset
    import open3d as o3d

    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "mesh.ply"))
    assert len(mesh.triangles) > 1000
    m = compare_surfaces(mesh, reference, n_samples=20_000, tau=0.04)
    assert m["accuracy_median"] < 0.04 and m["fscore"] > 0.7

    poses = {s.name: s.meta["pose"].tolist() for s in ds}
    (tmp_path / "poses.json").write_text(json.dumps(poses))
    (tmp_path / "k.json").write_text(json.dumps(Intrinsics.from_matrix(ds[0].intrinsics).to_dict()))
    args = parser.parse_args(["fuse", str(out), "--output", str(tmp_path / "pts.ply"), "--pointcloud", "--voxel", "0.02",
                              "--poses", str(tmp_path / "poses.json"), "--intrinsics", str(tmp_path / "k.json")])
    assert args.func(args) == 0
    assert len(o3d.io.read_point_cloud(str(tmp_path / "pts.ply")).points) > 1000
    del poses[ds[1].name]
    (tmp_path / "poses.json").write_text(json.dumps(poses))
    assert args.func(args) == 2  # a frame without a pose is an error, not a silent skip


def test_fuse_rejects_bad_input():
    with pytest.raises(ValueError, match="no frames"):
        fuse_tsdf([], Intrinsics(1, 1, 0, 0))
    with pytest.raises(ValueError, match="pose"):
        fuse_tsdf([Frame(np.ones((4, 4)), np.eye(3))], Intrinsics(2, 2, 1.5, 1.5))
