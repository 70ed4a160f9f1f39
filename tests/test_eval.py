"""Fusion baselines, and the dataset evaluation end to end on a real validation scene."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import kornia
import torch

from sddr_pipeline.evaluation import METHODS, METRIC_KEYS, evaluate_dataset, format_table, freq_merge, guided_fusion
from sddr_pipeline.evaluation.baselines import freq_sigma, guided_filter, guided_radius
from sddr_pipeline.cli.main import main
from sddr_pipeline.evaluation.runner import aggregate
from sddr_pipeline.models import Refiner


REAL_IMAGE = Path(__file__).resolve().parents[1] / "docs" / "img" / "tsdf_sample.png"


def scene(h: int = 60, w: int = 80) -> np.ndarray:
    """A disparity-like map: a slanted background and a near box."""
    yy, xx = np.mgrid[0:h, 0:w]
    d = 0.2 + 0.3 * xx / w + 0.1 * yy / h
    d[h // 4 : h // 2, w // 3 : 2 * w // 3] = 0.9
    return d.astype(np.float32)


def test_baseline_shapes_and_dtype():
    low, high = scene(30, 40), scene(60, 80)
    for out in (freq_merge(low, high, (75, 100)), guided_fusion(low, high, (75, 100))):
        assert out.shape == (75, 100) and out.dtype == np.float32 and np.isfinite(out).all()
    assert freq_sigma((480, 640)) == 2.5 and guided_radius((480, 640)) == 5


@pytest.mark.parametrize("size", [(60, 80), (90, 120)])
def test_freq_merge_of_identical_maps_is_the_low_map(size):
    low = scene()
    out = freq_merge(low, low.copy(), size)
    expected = low if size == low.shape else freq_merge(low, low, size)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    if size == low.shape:
        np.testing.assert_allclose(out, low, atol=1e-6)


def test_freq_merge_takes_low_values_and_high_details():
    """An affine-distorted high map is aligned first; a detail only the high map has
    (a thin line) survives in the merge, a global offset of the high map does not.
    At 384x512 the Gaussian has sigma 2 px, so a 1-px line is mostly high frequency."""
    low = scene(384, 512)
    high = 3.0 * scene(384, 512) + 5.0
    high[:, 10] = 3.0 * 1.0 + 5.0  # a 1-px line at disparity 1, absent from the low map
    out = freq_merge(low, high, low.shape)
    assert abs(float(np.median(out - low))) < 0.02
    assert out[:, 10].mean() > low[:, 10].mean() + 0.3


def test_guided_with_identical_maps_is_close_to_low():
    low = scene()
    out = guided_fusion(low, low.copy(), low.shape)
    span = float(low.max() - low.min())
    assert np.abs(out - low).max() < 0.05 * span
    assert np.abs(out - low).mean() < 0.01 * span


@pytest.mark.parametrize("radius, eps", [(1, 1e-3), (4, 1e-3), (8, 1e-4), (3, 0.1)])
def test_guided_filter_matches_kornia(radius, eps):
    """The scipy guided filter against kornia's guided_blur (kernel 2r+1, replicate border,
    float64), on random maps and on a real image (luminance) with a blurred copy."""
    rng = np.random.default_rng(radius)
    real = np.asarray(Image.open(REAL_IMAGE).convert("L"), dtype=np.float64)[120:360, 660:1140] / 255.0
    blurred = np.asarray(Image.fromarray((real * 255).astype(np.uint8)).resize((120, 60)).resize((480, 240)), np.float64) / 255
    for src, guide in [(rng.random((37, 53)), rng.random((37, 53))), (blurred, real)]:
        ours = guided_filter(guide, src, radius, eps)
        theirs = kornia.filters.guided_blur(torch.from_numpy(guide)[None, None], torch.from_numpy(src)[None, None],
                                            2 * radius + 1, eps, border_type="replicate")[0, 0].numpy()
        assert np.abs(ours - theirs).max() <= 1e-10


def test_baselines_reject_bad_input():
    with pytest.raises(ValueError):
        freq_merge(np.ones((4, 4, 3)), np.ones((4, 4)), (4, 4))
    with pytest.raises(ValueError):
        guided_fusion(np.full((4, 4), np.nan), np.ones((4, 4)), (4, 4))
    with pytest.raises(ValueError):
        guided_fusion(np.ones((4, 4)), np.ones((4, 4)), (4, 4), eps=0.0)


def test_aggregate_leaves_undefined_out_of_means():
    row = {k: 1.0 for k in METRIC_KEYS}
    per_image = [{"name": "a", "low": dict(row, ord=None)}, {"name": "b", "low": dict(row, ord=0.5, rel=3.0)}]
    agg = aggregate(per_image, ("low",))["low"]
    assert agg["ord"] == 0.5 and agg["counts"]["ord"] == 1
    assert agg["rel"] == 2.0 and agg["counts"]["rel"] == 2


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refiner")
    Refiner.from_config("sddr-small", seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def evaluated(shared_data, weights, tmp_path_factory):
    report = tmp_path_factory.mktemp("report")
    results = evaluate_dataset(
        shared_data / "middlebury2014q",
        "simulated:low=96,high=256",
        Refiner.from_pretrained(weights),
        limit=1,
        progress=False,
        report_dir=report,
    )
    return results, report


def test_end_to_end_structure(evaluated):
    results, _ = evaluated
    assert set(results["methods"]) == set(METHODS)
    assert len(results["per_image"]) == 1
    row = results["per_image"][0]
    assert row["name"] == "Adirondack/im0"
    for name in METHODS:
        mean = results["methods"][name]
        assert set(METRIC_KEYS) <= set(mean) and set(mean["counts"]) == set(METRIC_KEYS)
        for key in METRIC_KEYS:
            value = row[name][key]
            assert value is not None and math.isfinite(value), (name, key)  # dense GT: all defined
            assert mean[key] == value and mean["counts"][key] == 1
        assert row[name]["alignment"]["space"] == "disparity"
    cfg = results["config"]
    assert cfg["resolutions"] == {"low": 96, "high": 256}
    assert cfg["layout"] == "middlebury2014" and cfg["refiner"].startswith("sddr-small@")
    assert cfg["alignment"] == {"requested": "auto", "fit": "least-squares", "space": "disparity"}
    json.dumps(results, allow_nan=False)
    table = format_table(results)
    assert all(name in table for name in METHODS) and "defined on" not in table


def test_end_to_end_report(evaluated):
    results, report = evaluated
    index = (report / "index.html").read_text()
    assert "SDDR two-stage" in index and "Adirondack/im0" in index
    pictures = list((report / "images").glob("*.png"))
    assert len(pictures) == 1
    with Image.open(pictures[0]) as im:
        assert im.width > 1000 and im.height > 500
    assert json.loads((report / "results.json").read_text())["config"] == results["config"]


def test_sparse_ground_truth_reports_nulls_and_counts(shared_data, weights):
    results = evaluate_dataset(
        shared_data / "kitti_sample",
        "simulated:low=64,high=128",
        Refiner.from_pretrained(weights),
        limit=1,
        two_stage=False,
        progress=False,
    )
    assert set(results["methods"]) == set(METHODS) - {"sddr_two_stage"}
    row = results["per_image"][0]["sddr_one_stage"]
    assert row["ord"] is None and "sparse" in row["undefined"]["ord"]
    assert row["delta1"] is not None
    mean = results["methods"]["sddr_one_stage"]
    assert mean["ord"] is None and mean["counts"]["ord"] == 0 and mean["counts"]["rel"] == 1
    assert "defined on" in format_table(results)


def test_cli_writes_json_and_rejects_missing_weights(shared_data, weights, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = [
        "eval", str(shared_data / "middlebury2014q"), "--predictor", "simulated:low=64,high=128", "--weights", str(weights),
        "--limit", "1", "--no-two-stage", "--json", str(out), "--quiet", "--device", "cpu",
    ]
    assert main(args) == 0
    assert "sddr_one_stage" in capsys.readouterr().out
    raw = json.loads(out.read_text())
    # the gated preset's own clamp is none; --range-clamp opts in
    assert "sddr_two_stage" not in raw["methods"] and raw["config"]["range_clamp"] == 0
    clamped_out = tmp_path / "clamped.json"
    assert main([*args[:-4], str(clamped_out), "--quiet", "--device", "cpu", "--range-clamp", "0.0078125"]) == 0
    clamped = json.loads(clamped_out.read_text())
    assert clamped["config"]["range_clamp"] == 1 / 128
    assert raw["methods"]["low"] == clamped["methods"]["low"]  # same predictions, only the SDDR maps change
    assert raw["methods"]["sddr_one_stage"]["rel"] != clamped["methods"]["sddr_one_stage"]["rel"]
    bad = ["eval", str(shared_data / "middlebury2014q"), "--predictor", "simulated", "--weights", str(tmp_path / "none")]
    assert main(bad) == 2
    assert "not found" in capsys.readouterr().err
