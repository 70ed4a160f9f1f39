"""NeRF / 3DGS depth export, read back the way each trainer documents it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sddr_pipeline.batch import refine_folder
from sddr_pipeline.data import write_synthetic_dataset
from sddr_pipeline.geometry import RelativeDepthError
from sddr_pipeline.models import Refiner
from sddr_pipeline.plugins.nerf import DEFAULT_OUTPUT, NerfExportError, export_nerf, read_confidence_png
from sddr_pipeline.predictors import get_predictor
from test_geometry import GroundTruthMetric


def read_uint16(path: Path) -> np.ndarray:
    """As ``cv2.imread(path, cv2.IMREAD_ANYDEPTH)`` / ``cv2.imread(path, -1)``: raw uint16."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    assert arr.dtype == np.uint16 or im.mode.startswith("I;16"), im.mode
    return arr.astype(np.float64)


def make_capture(root: Path, sizes=((48, 64), (48, 64), (48, 64))) -> dict[str, np.ndarray]:
    """A transforms.json with three frames and their (image-size) depth maps."""
    root.mkdir(parents=True)
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    frames, depths = [], {}
    for i, (h, w) in enumerate(sizes):
        name = f"frame_{i:03d}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        yy, xx = np.mgrid[0:h, 0:w]
        d = (1.5 + 3.0 * xx / w + 0.5 * yy / h + 0.3 * i).astype(np.float32)
        d[0, 0] = 0.0  # a hole
        depths[name] = d
        frames.append({"file_path": f"images/{name}.png", "transform_matrix": np.eye(4).tolist()})
    (root / "transforms.json").write_text(json.dumps({"fl_x": 50.0, "fl_y": 50.0, "cx": 32, "cy": 24, "w": 64, "h": 48,
                                                      "frames": frames}))
    return depths


def test_nerfstudio_roundtrip(tmp_path):
    depths = make_capture(tmp_path / "cap")
    report = export_nerf(tmp_path / "cap" / "transforms.json", depths, "nerfstudio")
    out = json.loads((tmp_path / "cap" / "transforms_depth.json").read_text())
    assert out["depth_unit_scale_factor"] == 1e-3 and len(report.written) == 3
    original = json.loads((tmp_path / "cap" / "transforms.json").read_text())
    assert "depth_file_path" not in original["frames"][0]  # the input is never rewritten
    for frame in out["frames"]:
        name = Path(frame["file_path"]).stem
        # nerfstudio: get_depth_image_from_path -> imread(ANYDEPTH) * depth_unit_scale_factor
        depth = read_uint16(tmp_path / "cap" / frame["depth_file_path"]) * out["depth_unit_scale_factor"]
        gt = depths[name]
        assert depth[0, 0] == 0
        np.testing.assert_allclose(depth[gt > 0], gt[gt > 0], atol=5e-4 + 1e-9)


def test_instant_ngp_roundtrip_and_resize_to_the_image(tmp_path):
    depths = make_capture(tmp_path / "cap", sizes=((48, 64), (96, 128), (48, 64)))
    depths["frame_001"] = depths["frame_001"][::2, ::2].copy()  # a half-size map for a full-size image
    export_nerf(tmp_path / "cap" / "transforms.json", depths, "instant-ngp", tmp_path / "cap" / "ngp.json")
    out = json.loads((tmp_path / "cap" / "ngp.json").read_text())
    scale = out["integer_depth_scale"]
    assert scale == pytest.approx(max(float(d.max()) for d in depths.values()) / 65535)
    for frame in out["frames"]:
        name = Path(frame["file_path"]).stem
        depth = read_uint16(tmp_path / "cap" / frame["depth_path"]) * scale  # instant-ngp: value * integer_depth_scale
        gt = depths[name]
        if name == "frame_001":
            assert depth.shape == (96, 128)
            depth = depth[::2, ::2]
        ok = gt > 0
        np.testing.assert_allclose(depth[ok], gt[ok], atol=scale)


def test_3dgs_roundtrip_both_loaders(tmp_path):
    depths = make_capture(tmp_path / "cap")
    (tmp_path / "cap" / "sparse" / "0").mkdir(parents=True)
    report = export_nerf(tmp_path / "cap" / "transforms.json", depths, "3dgs")
    params = json.loads((tmp_path / "cap" / "sparse" / "0" / "depth_params.json").read_text())
    assert set(params) == set(depths)
    for name, gt in depths.items():
        png = read_uint16(tmp_path / "cap" / "depths" / f"{name}.png")
        blender = png / 512  # 3DGS loader for transforms.json scenes
        colmap = png / 2**16 * params[name]["scale"] + params[name]["offset"]  # 3DGS COLMAP loader
        np.testing.assert_allclose(blender, colmap)
        ok = gt > 0
        assert blender[0, 0] == 0
        np.testing.assert_allclose(blender[ok], 1 / gt[ok], atol=0.5 / 512 + 1e-9)
    assert 0 < report.extra["max_quantisation_rel_error"] < 0.01


def test_missing_frames_collisions_and_refusals(tmp_path):
    depths = make_capture(tmp_path / "cap")
    t = tmp_path / "cap" / "transforms.json"
    partial = {"images/frame_000": depths["frame_000"]}
    report = export_nerf(t, partial, "nerfstudio")
    assert report.missing == ["images/frame_001.png", "images/frame_002.png"]
    frames = json.loads((tmp_path / "cap" / "transforms_depth.json").read_text())["frames"]
    assert "depth_file_path" in frames[0] and "depth_file_path" not in frames[1]
    with pytest.raises(NerfExportError, match="no depth map"):
        export_nerf(t, partial, "nerfstudio", require_all=True)
    with pytest.raises(NerfExportError, match="overwrite"):
        export_nerf(t, depths, "nerfstudio", t)
    with pytest.raises(NerfExportError, match="format"):
        export_nerf(t, depths, "nerf-w")  # type: ignore[arg-type]
    spec = json.loads(t.read_text())
    spec["frames"].append({"file_path": "other/frame_000.png", "transform_matrix": np.eye(4).tolist()})
    t.write_text(json.dumps(spec))
    with pytest.raises(NerfExportError, match="stem"):
        export_nerf(t, depths, "3dgs")


def test_export_from_refine_outputs(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = write_synthetic_dataset(tmp_path / "synth", count=2, height=48, width=64, seed=5)
        refiner = Refiner.from_config("sddr-small")
        metric = refine_folder(data, tmp_path / "metric", GroundTruthMetric(), refiner, progress=False)
        relative = refine_folder(data, tmp_path / "relative", get_predictor("simulated:low=32,high=64"), refiner, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert metric.ok and relative.ok
    frames = [{"file_path": f"rgb/{n}.png", "transform_matrix": np.eye(4).tolist()} for n in metric.done]
    (data / "transforms.json").write_text(json.dumps({"frames": frames}))
    from sddr_pipeline.plugins import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["nerf", str(data / "transforms.json"), str(tmp_path / "metric"), "--format", "nerfstudio",
                              "--require-all"])
    assert args.func(args) == 0
    out = json.loads((data / "transforms_depth.json").read_text())
    name = metric.done[0]
    depth = read_uint16(data / out["frames"][0]["depth_file_path"]) * 1e-3
    gt = np.load(data / "gt" / f"{name}.npy")
    assert np.median(np.abs(depth - gt) / gt) < 0.03
    with pytest.raises(RelativeDepthError):
        export_nerf(data / "transforms.json", tmp_path / "relative", "nerfstudio")


def make_confidence(depths: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: rng.random(d.shape, dtype=np.float32) for name, d in depths.items()}


@pytest.mark.parametrize("fmt", ["nerfstudio", "instant-ngp"])
def test_confidence_weight_maps_round_trip(tmp_path, fmt):
    depths = make_capture(tmp_path / "cap", sizes=((48, 64), (96, 128), (48, 64)))
    depths["frame_001"] = depths["frame_001"][::2, ::2].copy()  # half-size maps for a full-size image
    conf = make_confidence(depths)
    report = export_nerf(tmp_path / "cap" / "transforms.json", depths, fmt, confidence=conf)
    out = json.loads((tmp_path / "cap" / DEFAULT_OUTPUT[fmt]).read_text())
    depth_key = "depth_file_path" if fmt == "nerfstudio" else "depth_path"
    assert len(report.confidence) == 3
    for frame in out["frames"]:
        name = Path(frame["file_path"]).stem
        conf_dir = "confidence" if fmt == "nerfstudio" else "confidence_ngp"
        assert frame["depth_confidence_path"] == f"{conf_dir}/" + frame[depth_key].split("/", 1)[1]  # mirrors depth
        path = tmp_path / "cap" / frame["depth_confidence_path"]
        weight = read_confidence_png(path)
        assert weight.dtype == np.float32 and weight.shape == read_uint16(tmp_path / "cap" / frame[depth_key]).shape
        np.testing.assert_allclose(read_uint16(path) / 65535, weight, atol=1e-7)  # as a trainer reads it
        if name == "frame_001":
            assert weight.shape == (96, 128)
            weight = weight[::2, ::2]
        expected = conf[name].copy()
        expected[0, 0] = 0.0  # no depth there, so no weight
        np.testing.assert_allclose(weight, expected, atol=0.5 / 65535 + 1e-7)


def test_confidence_for_3dgs_and_missing_maps(tmp_path):
    depths = make_capture(tmp_path / "cap")
    t = tmp_path / "cap" / "transforms.json"
    conf = make_confidence(depths)
    report = export_nerf(t, depths, "3dgs", confidence=conf)
    for name in depths:
        assert report.confidence[f"images/{name}.png"] == f"depths_confidence/{name}.png"
        weight = read_confidence_png(tmp_path / "cap" / "depths_confidence" / f"{name}.png")
        assert weight.shape == depths[name].shape and weight[0, 0] == 0 and 0 <= weight.min() <= weight.max() <= 1
        np.testing.assert_allclose(weight[1:, 1:], conf[name][1:, 1:], atol=0.5 / 65535 + 1e-7)
    assert (tmp_path / "cap" / "depths").is_dir()
    with pytest.raises(NerfExportError, match="no confidence map for frame 'images/frame_002.png'"):
        export_nerf(t, depths, "nerfstudio", confidence={k: v for k, v in conf.items() if k != "frame_002"})
    with pytest.raises(NerfExportError, match="pass the confidence maps as a mapping"):
        export_nerf(t, depths, "nerfstudio", confidence=True)
    with pytest.raises(NerfExportError, match="frame 'images/frame_000.png' is \\(24, 32\\)"):
        export_nerf(t, depths, "nerfstudio", confidence={**conf, "frame_000": conf["frame_000"][::2, ::2]})
    export_nerf(t, depths, "nerfstudio", tmp_path / "cap" / "plain.json")
    assert "depth_confidence_path" not in json.loads((tmp_path / "cap" / "plain.json").read_text())["frames"][0]


def test_confidence_from_refine_output(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = write_synthetic_dataset(tmp_path / "synth", count=2, height=48, width=64, seed=5)
        report = refine_folder(data, tmp_path / "metric", GroundTruthMetric(), Refiner.from_pretrained("default"),
                               confidence=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert report.ok
    frames = [{"file_path": f"rgb/{n}.png", "transform_matrix": np.eye(4).tolist()} for n in report.done]
    (data / "transforms.json").write_text(json.dumps({"frames": frames}))
    from sddr_pipeline.plugins import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["nerf", str(data / "transforms.json"), str(tmp_path / "metric"), "--confidence"])
    assert args.func(args) == 0
    out = json.loads((data / "transforms_depth.json").read_text())
    for frame, name in zip(out["frames"], report.done):
        weight = read_confidence_png(data / frame["depth_confidence_path"])
        conf = np.load(tmp_path / "metric" / "confidence" / f"{name}.npy")
        depth_code = read_uint16(data / frame["depth_file_path"])
        assert weight.shape == conf.shape == depth_code.shape == (48, 64)
        ok = depth_code > 0
        np.testing.assert_allclose(weight[ok], conf[ok], atol=0.5 / 65535 + 1e-7)
        assert (weight[~ok] == 0).all()
    (tmp_path / "metric" / "confidence" / f"{report.done[1]}.npy").unlink()
    with pytest.raises(NerfExportError, match=f"no confidence map for frame 'rgb/{report.done[1]}.png'.*--skip-existing --confidence"):
        export_nerf(data / "transforms.json", tmp_path / "metric", "3dgs", confidence=True)


def test_instant_ngp_never_overwrites_the_nerfstudio_export(tmp_path):
    depths = make_capture(tmp_path / "cap")
    t = tmp_path / "cap" / "transforms.json"
    export_nerf(t, depths, "nerfstudio")
    nerfstudio = (tmp_path / "cap" / "transforms_depth.json").read_bytes()
    report = export_nerf(t, depths, "instant-ngp")
    assert report.transforms == tmp_path / "cap" / "transforms_depth_ngp.json"
    assert (tmp_path / "cap" / "transforms_depth.json").read_bytes() == nerfstudio
    assert "integer_depth_scale" in json.loads(report.transforms.read_text())
    with pytest.raises(NerfExportError, match="refusing to overwrite .*transforms_depth.json: it holds the nerfstudio export"):
        export_nerf(t, depths, "instant-ngp", tmp_path / "cap" / "transforms_depth.json")
    with pytest.raises(NerfExportError, match="it holds the instant-ngp export"):
        export_nerf(t, depths, "nerfstudio", report.transforms)
    assert (tmp_path / "cap" / "transforms_depth.json").read_bytes() == nerfstudio
