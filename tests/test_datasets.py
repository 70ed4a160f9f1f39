"""Dataset layouts: real samples under shared/data, and generic/images layouts on tmp folders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sddr_pipeline.data as data_pkg
from sddr_pipeline.data import Dataset, DatasetError, Sample, open_dataset
from sddr_pipeline.data.datasets import PRIMESENSE_INTRINSICS, detect_layout, read_redwood_log
from sddr_pipeline.data.images import read_depth_png16, read_gray8, read_pfm
from sddr_pipeline.predictors.base import SampleContext


def test_package_exports():
    for name in ("read_image", "ImageReadError", "open_dataset", "Dataset", "Sample", "make_scene",
                 "write_synthetic_dataset", "IMAGE_EXTENSIONS"):
        assert hasattr(data_pkg, name), name


@pytest.mark.parametrize(
    "folder, layout",
    [
        ("middlebury2014q", "middlebury2014"),
        ("middlebury2005_2006", "middlebury2005_2006"),
        ("kitti_sample", "kitti"),
        ("nyu_sample", "nyu"),
        ("rgbd_sequence_sample", "rgbd_sequence"),
        ("rgbd_sequence_sample/other_formats", "images"),
    ],
)
def test_auto_detection(shared_data, folder, layout):
    assert detect_layout(shared_data / folder) == layout
    assert open_dataset(shared_data / folder).layout == layout


# ------------------------------------------------------------------ middlebury 2014


def test_middlebury2014_samples(shared_data):
    ds = open_dataset(shared_data / "middlebury2014q")
    assert isinstance(ds, Dataset) and len(ds) == 3
    assert ds.names == ["Adirondack/im0", "ArtL/im0", "Jadeplant/im0"]
    shapes = {"Adirondack/im0": (496, 718), "ArtL/im0": (277, 347), "Jadeplant/im0": (497, 659)}
    for sample in ds:
        assert sample.gt_kind == "depth" and sample.meta["units"] == "m"
        assert sample.gt.dtype == np.float32 and sample.gt.shape == shapes[sample.name]
        assert sample.image().shape == shapes[sample.name] + (3,)
        valid = sample.gt > 0
        assert 0.95 < valid.mean() < 1.0  # a few inf (unknown) disparities
        assert 0.5 < sample.gt[valid].min() and sample.gt[valid].max() < 10.0  # table-top scenes, metres
        assert sample.meta["calib_scale"] == (1.0, 1.0)  # the quarter-size calib matches the images
        assert Path(sample.meta["mask_nocc_path"]).is_file()


def test_middlebury2014_depth_and_intrinsics_from_calib(shared_data):
    sample = open_dataset(shared_data / "middlebury2014q")[0]
    assert sample.name == "Adirondack/im0"
    np.testing.assert_allclose(
        sample.intrinsics, [[1038.018, 0, 322.037], [0, 1038.018, 243.393], [0, 0, 1]]
    )
    disp = read_pfm(shared_data / "middlebury2014q/Adirondack/disp0GT.pfm")
    y, x = 250, 360
    assert np.isfinite(disp[y, x])
    expected = 176.252 * 1038.018 / (disp[y, x] + 53.271) / 1000.0
    assert sample.gt[y, x] == pytest.approx(expected, rel=1e-6)
    np.testing.assert_array_equal(sample.gt == 0, ~np.isfinite(disp))


def test_middlebury2014_calib_at_another_resolution_is_rescaled(shared_data, tmp_path):
    """A full-resolution calib.txt next to half-size files: K and doffs scale, depth does not change."""
    scene = tmp_path / "ArtL"
    shutil.copytree(shared_data / "middlebury2014q/ArtL", scene)
    (scene / "calib.txt").write_text(
        "cam0=[1870 0 296; 0 1870 276; 0 0 1]\ncam1=[1870 0 396; 0 1870 276; 0 0 1]\n"
        "doffs=100\nbaseline=160\nwidth=694\nheight=554\nndisp=128\n"
    )
    original = open_dataset(shared_data / "middlebury2014q")[1]
    rescaled = open_dataset(tmp_path)[0]
    assert rescaled.meta["calib_scale"] == (0.5, 0.5)
    np.testing.assert_allclose(rescaled.intrinsics, original.intrinsics)
    np.testing.assert_allclose(rescaled.gt, original.gt, rtol=1e-6)


# ----------------------------------------------------------- middlebury 2005/2006


def test_middlebury_2005_2006_scenes_and_scales(shared_data):
    root = shared_data / "middlebury2005_2006"
    ds = open_dataset(root)
    assert len(ds) == 28  # 26 scenes from 2005/2006 + Cones + Teddy; 2001 scenes dropped
    assert "Aloe/view1" in ds.names and "Cones/imL" in ds.names and "Teddy/imL" in ds.names
    assert not any(n.split("/")[0] in ("Tsukuba", "Venus", "bull") for n in ds.names)
    aloe = ds[ds.names.index("Aloe/view1")]
    assert aloe.gt_kind == "disparity" and aloe.intrinsics is None and aloe.gt.shape == (370, 427)
    raw = read_gray8(root / "Aloe/disp1.png")
    y, x = np.argwhere(raw > 0)[1000]
    assert aloe.gt[y, x] == np.float32(raw[y, x]) / np.float32(3)
    np.testing.assert_array_equal(aloe.gt == 0, raw == 0)
    assert aloe.meta["scale_verified"] is True
    cones = ds[ds.names.index("Cones/imL")]
    raw = read_gray8(root / "Cones/disp2.png")
    np.testing.assert_array_equal(cones.gt, raw.astype(np.float32) / 4)
    assert cones.gt.shape == (375, 450) == cones.image().shape[:2]


def test_middlebury_2001_scenes_only_on_request(shared_data):
    ds = open_dataset(shared_data / "middlebury2005_2006", include_unverified=True)
    assert len(ds) == 35
    old = [s for s in ds if not s.meta["scale_verified"]]
    assert sorted(s.name for s in old) == [
        "Tsukuba/imL", "Venus/imL", "barn1/im2", "barn2/im2", "bull/im6", "poster/im2", "sawtooth/im2"
    ]
    tsukuba = next(s for s in old if s.name == "Tsukuba/imL")
    valid = tsukuba.gt[tsukuba.gt > 0]
    assert valid.min() == 5 and valid.max() == 14  # Tsukuba's known 5..14 px range at x16


# ------------------------------------------------------------------ kitti / nyu


def test_kitti(shared_data):
    root = shared_data / "kitti_sample"
    ds = open_dataset(root)
    assert ds.names == ["rgb/0000000005", "rgb/0000000050", "rgb/0000000100"]
    sample = ds[1]
    assert sample.gt.shape == (375, 1242) and sample.image().shape == (375, 1242, 3)
    np.testing.assert_allclose(sample.intrinsics, [[707.0493, 0, 604.0814], [0, 707.0493, 180.5066], [0, 0, 1]])
    for s in ds:
        valid = s.gt > 0
        assert 0.15 < valid.mean() < 0.25  # sparse LiDAR, ~19 %
        assert 1.0 < s.gt[valid].min() and s.gt[valid].max() < 120.0
        assert 5.0 < np.median(s.gt[valid]) < 40.0
    raw = read_depth_png16(root / "depth/0000000050.png")
    y, x = np.argwhere(raw > 0)[500]
    assert sample.gt[y, x] == np.float32(raw[y, x]) / np.float32(256)


def test_nyu(shared_data):
    root = shared_data / "nyu_sample"
    ds = open_dataset(root)
    assert ds.names == ["rgb/rgb_00000", "rgb/rgb_00050", "rgb/rgb_00100"]
    for s in ds:
        assert s.gt.shape == (480, 640) and s.meta["depth_scale"] == 1000.0
        valid = s.gt > 0
        assert 0.5 < valid.mean() < 1.0
        assert 0.3 < s.gt[valid].min() and s.gt[valid].max() < 10.5
    np.testing.assert_allclose(ds[0].intrinsics, [[518.8579, 0, 325.58245], [0, 519.46961, 253.73617], [0, 0, 1]])
    raw = read_depth_png16(root / "depth/sync_depth_00000.png")
    np.testing.assert_allclose(ds[0].gt, raw / 1000.0, rtol=1e-6)


def test_annotations_with_unknown_scale_need_an_override(tmp_path):
    (tmp_path / "rgb").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "rgb/a.png")
    Image.fromarray(np.full((4, 6), 500, np.uint16)).save(tmp_path / "a_depth.png")
    files = [{"rgb": "rgb/a.png", "depth": "a_depth.png", "depth_scale": 100.0, "cam_in": [1, 2, 3, 4]}]
    (tmp_path / "test_annotations.json").write_text(json.dumps({"files": files}))
    with pytest.raises(DatasetError, match="layout='kitti' or layout='nyu'"):
        open_dataset(tmp_path)
    sample = open_dataset(tmp_path, layout="nyu")[0]
    assert sample.name == "rgb/a" and np.all(sample.gt == 5.0)  # the file's own depth_scale wins


# ----------------------------------------------------------------- rgbd sequence


def test_rgbd_sequence(shared_data):
    root = shared_data / "rgbd_sequence_sample"
    ds = open_dataset(root)
    assert ds.names == [f"color/{i:05d}" for i in range(5)]
    poses = read_redwood_log(root / "trajectory.log")
    for i, s in enumerate(ds):
        assert s.gt.shape == (480, 640) and s.meta["frame"] == i
        np.testing.assert_array_equal(s.intrinsics, PRIMESENSE_INTRINSICS)
        pose = s.meta["pose"]
        np.testing.assert_array_equal(pose, poses[i])
        np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6)
        valid = s.gt > 0
        assert 0.3 < s.gt[valid].min() and s.gt[valid].max() < 6.0
    assert ds[0].meta["pose"][0, 3] == pytest.approx(-0.31057997014702826)
    raw = read_depth_png16(root / "depth/00000.png")
    np.testing.assert_allclose(ds[0].gt, raw / 1000.0, rtol=1e-6)


# ------------------------------------------------------------------ generic / images


def _write_generic(root: Path) -> None:
    (root / "rgb/sub").mkdir(parents=True)
    (root / "gt/sub").mkdir(parents=True)
    Image.fromarray(np.full((4, 6, 3), 100, np.uint8)).save(root / "rgb/a.png")
    Image.fromarray(np.full((4, 6, 3), 50, np.uint8)).save(root / "rgb/sub/b.JPG")
    Image.fromarray(np.full((4, 6, 3), 10, np.uint8)).save(root / "rgb/c.png")
    gt = np.full((4, 6), 2.0, np.float32)
    gt[0, 0], gt[0, 1], gt[0, 2], gt[0, 3] = np.nan, np.inf, -1.0, 0.0
    np.save(root / "gt/a.npy", gt)
    np.save(root / "gt/sub/b.npy", np.ones((4, 6), np.float64))
    K = [[100.0, 0, 3], [0, 100, 2], [0, 0, 1]]
    (root / "dataset.json").write_text(json.dumps({"gt_kind": "depth", "intrinsics": {"a": K}}))
    (root / "intrinsics/sub").mkdir(parents=True)
    (root / "intrinsics/sub/b.json").write_text(json.dumps({"fx": 50, "fy": 60, "cx": 2.5, "cy": 1.5}))


def test_generic_layout(tmp_path):
    _write_generic(tmp_path)
    ds = open_dataset(tmp_path)
    assert ds.layout == "generic" and ds.names == ["a", "c", "sub/b"]
    a, c, b = ds
    assert a.gt.dtype == np.float32 and a.gt[0, :4].tolist() == [0, 0, 0, 0] and a.gt[1, 1] == 2.0
    np.testing.assert_array_equal(a.intrinsics, [[100, 0, 3], [0, 100, 2], [0, 0, 1]])
    assert c.gt is None and c.intrinsics is None
    np.testing.assert_array_equal(b.intrinsics, [[50, 0, 2.5], [0, 60, 1.5], [0, 0, 1]])
    assert b.gt.dtype == np.float32 and b.image()[0, 0, 0] in range(45, 56)
    ctx = a.context()
    assert isinstance(ctx, SampleContext)
    assert ctx.name == "a" and ctx.gt is a.gt and ctx.gt_kind == "depth" and ctx.intrinsics is a.intrinsics
    assert [s.name for s in ds[1:]] == ["c", "sub/b"] and ds[-1].name == "sub/b"


def test_generic_intrinsics_as_K_and_disparity(tmp_path):
    _write_generic(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"gt_kind": "disparity"}))
    (tmp_path / "intrinsics/sub/b.json").write_text(json.dumps({"K": [[7, 0, 1], [0, 8, 2], [0, 0, 1]]}))
    b = open_dataset(tmp_path, layout="generic")[2]
    assert b.gt_kind == "disparity" and b.intrinsics[1, 1] == 8


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: (r / "dataset.json").unlink(), "no dataset.json declaring gt_kind"),
        (lambda r: (r / "dataset.json").write_text('{"gt_kind": "inverse"}'), "gt_kind must be"),
        (lambda r: (r / "dataset.json").write_text("{not json"), "dataset.json"),
        (lambda r: np.save(r / "gt/zzz.npy", np.ones((4, 6))), r"without a matching rgb/ image: \['zzz'\]"),
        (lambda r: (r / "dataset.json").write_text('{"gt_kind": "depth", "intrinsics": {"x": []}}'), "no rgb/ image"),
        (lambda r: (r / "intrinsics/sub/b.json").write_text('{"fx": 1}'), r"b\.json"),
    ],
)
def test_generic_layout_errors(tmp_path, breakage, message):
    _write_generic(tmp_path)
    breakage(tmp_path)
    with pytest.raises(DatasetError, match=message):
        open_dataset(tmp_path, layout="generic")


def test_generic_gt_shape_mismatch_names_both_files(tmp_path):
    _write_generic(tmp_path)
    np.save(tmp_path / "gt/a.npy", np.ones((3, 3), np.float32))
    ds = open_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"gt/a\.npy is 3x3 but image .*rgb/a\.png is 4x6"):
        ds[0]


def test_images_layout_is_recursive_and_case_insensitive(tmp_path):
    (tmp_path / "x/y").mkdir(parents=True)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "one.PNG")
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "x/y/two.JpEg", format="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    ds = open_dataset(tmp_path)
    assert ds.layout == "images" and ds.names == ["one", "x/y/two"]
    assert ds[0].gt is None and ds[1].image().shape == (3, 3, 3)


def test_images_name_collision_names_both_files(tmp_path):
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "a.jpg")
    with pytest.raises(DatasetError, match=r"'a'.*a\.(png|jpg) and .*a\.(png|jpg)"):
        open_dataset(tmp_path)


def test_layout_override_and_bad_roots(shared_data, tmp_path):
    assert len(open_dataset(shared_data / "kitti_sample", layout="images")) == 6  # rgb + depth PNGs
    with pytest.raises(DatasetError, match="Looked for .*middlebury2014.*generic.*images"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown layout 'coco'"):
        open_dataset(shared_data / "kitti_sample", layout="coco")


def test_sample_cleans_gt_and_checks_intrinsics(tmp_path):
    s = Sample("x", tmp_path / "x.png", gt=np.array([[np.nan, -2.0], [np.inf, 3.0]]), gt_kind="disparity")
    assert s.gt.dtype == np.float32 and s.gt.tolist() == [[0, 0], [0, 3]]
    with pytest.raises(DatasetError, match="3x3"):
        Sample("x", tmp_path / "x.png", intrinsics=np.eye(4))
    with pytest.raises(DatasetError, match="gt_kind"):
        Sample("x", tmp_path / "x.png", gt_kind="metres")  # type: ignore[arg-type]
