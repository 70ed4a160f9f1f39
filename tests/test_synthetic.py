"""Synthetic RGB-D scenes: determinism, exact depth, thin structures, texture, dataset round trip."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from sddr_pipeline.data import make_scene, open_dataset, write_synthetic_dataset
from sddr_pipeline.data.synthetic import KINDS, SyntheticScene


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return make_scene(192, 256, seed=7)


def _rays(K: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    return np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones(len(xs))], axis=1)


def test_shapes_and_types(scene):
    assert scene.rgb.shape == (192, 256, 3) and scene.rgb.dtype == np.uint8
    assert scene.depth.shape == (192, 256) and scene.depth.dtype == np.float32
    assert np.all(np.isfinite(scene.depth)) and scene.depth.min() > 0.5 and scene.depth.max() < 50
    assert scene.intrinsics.shape == (3, 3) and scene.intrinsics[0, 0] == scene.intrinsics[1, 1]
    assert scene.labels.shape == (192, 256) and set(scene.kinds) <= set(KINDS)


def test_deterministic_for_a_seed():
    a, b, c = make_scene(64, 96, seed=3), make_scene(64, 96, seed=3), make_scene(64, 96, seed=4)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.intrinsics, b.intrinsics)
    assert not np.array_equal(a.depth, c.depth)


@pytest.mark.parametrize("plane", ["wall", "ground"])
def test_plane_depth_is_analytic(scene, plane):
    ys, xs = np.nonzero(scene.labels == scene.kinds.index(plane))
    assert len(ys) > 100
    normal, offset = scene.planes[plane]
    expected = offset / (_rays(scene.intrinsics, ys, xs) @ normal)
    np.testing.assert_allclose(scene.depth[ys, xs], expected, rtol=1e-6)


def test_occlusion_edges_are_sharp(scene):
    """Depth is point-sampled: no mixed values between an object and what it occludes."""
    jumps = np.abs(np.diff(scene.depth, axis=1)) / scene.depth[:, 1:]
    assert (jumps > 0.2).sum() > 50
    assert len(set(scene.kinds)) >= 6


def test_thin_structures_are_one_to_three_pixels_wide():
    widths = []
    for seed in range(3):
        s = make_scene(192, 256, seed=seed)
        for i, kind in enumerate(s.kinds):
            mask = s.labels == i
            if kind == "pole" and mask.any():
                widths.append(np.median(mask.sum(axis=1)[mask.any(axis=1)]))
            if kind == "wire" and mask.any():
                widths.append(np.median(mask.sum(axis=0)[mask.any(axis=0)]))
    assert widths, "no pole or wire visible in three scenes"
    assert min(widths) < 4 and max(widths) <= 4


def test_texture_edges_without_depth_edges(scene):
    """Strong colour edges on smooth depth exist: the RGB is not a rendering of depth."""
    gray = scene.rgb.astype(np.float32).mean(axis=2)
    colour_edge = np.abs(np.diff(gray, axis=1)) > 25
    depth_edge = np.abs(np.diff(scene.depth, axis=1)) / scene.depth[:, 1:] > 0.01
    assert (colour_edge & ~depth_edge).mean() > 0.002


def test_full_size_scene_is_fast():
    start = time.perf_counter()
    s = make_scene(384, 512, seed=11)
    elapsed = time.perf_counter() - start
    assert s.rgb.shape == (384, 512, 3)
    print(f"384x512 synthetic scene in {elapsed:.2f} s")


def test_dataset_round_trip(tmp_path):
    root = write_synthetic_dataset(tmp_path / "syn", count=3, height=48, width=64, seed=5)
    ds = open_dataset(root)
    assert ds.layout == "generic" and ds.names == ["00000", "00001", "00002"]
    spec = json.loads((root / "dataset.json").read_text())
    assert spec["gt_kind"] == "depth"
    first = make_scene(48, 64, int(np.random.SeedSequence([5, 0]).generate_state(1)[0]))
    sample = ds[0]
    np.testing.assert_array_equal(sample.gt, first.depth)
    np.testing.assert_array_equal(sample.image(), first.rgb)
    np.testing.assert_array_equal(sample.intrinsics, first.intrinsics)
    assert sample.gt_kind == "depth"
    assert not list(root.rglob(".tmp-*"))


def test_refuses_to_overwrite_unless_asked(tmp_path):
    root = write_synthetic_dataset(tmp_path / "syn", count=3, height=24, width=32, seed=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_synthetic_dataset(root, count=2, height=24, width=32, seed=2)
    write_synthetic_dataset(root, count=2, height=24, width=32, seed=2, overwrite=True)
    assert open_dataset(root).names == ["00000", "00001"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other/keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_synthetic_dataset(tmp_path / "other", count=1, height=24, width=32)
