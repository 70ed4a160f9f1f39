"""Exact values of the METRICS.md metrics on hand-built maps."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sddr_pipeline.evaluation.metrics import (
    DBE_MAX,
    METRIC_KEYS,
    boundary_f1,
    evaluate_prediction,
    ordinal,
    prepare_ground_truth,
    random_pairs,
    resize_bilinear,
)

H, W, STEP = 96, 128, 64


def step_depth(col: int = STEP, near: float = 1.0, far: float = 4.0) -> np.ndarray:
    """Depth ``near`` left of column ``col``, ``far`` from it on (a vertical step edge)."""
    d = np.full((H, W), near)
    d[:, col:] = far
    return d


@pytest.fixture(scope="module")
def step():
    gt = step_depth()
    return gt, prepare_ground_truth(gt, "depth")


def finite_or_none(result: dict) -> bool:
    return all(result[k] is None or math.isfinite(result[k]) for k in METRIC_KEYS)


def test_ordinal_definition():
    a = np.array([1.2, 1.0, 1.0, 0.0])
    b = np.array([1.0, 1.2, 1.05, 0.0])
    assert ordinal(a, b, 1.1).tolist() == [1, -1, 0, 0]
    assert ordinal(np.array([1.0]), np.array([1.0]), 1.0).tolist() == [0]


def test_random_pairs_are_distinct_others_and_seeded():
    pairs = random_pairs(50, seed=3)
    assert pairs.shape == (150, 2)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    for i in range(50):
        assert len(set(pairs[pairs[:, 0] == i, 1])) == 3
    assert np.array_equal(pairs, random_pairs(50, seed=3))
    assert not np.array_equal(pairs, random_pairs(50, seed=4))
    assert random_pairs(1, seed=0).shape == (0, 2)
    assert random_pairs(3, seed=0).shape == (6, 2)


def test_exact_prediction_is_perfect(step):
    gt, ref = step
    gt = gt.copy()
    gt[:, :STEP] += np.linspace(0, 0.2, H)[:, None]  # a gentle slope, so values are not only two levels
    ref = prepare_ground_truth(gt, "depth")
    r = evaluate_prediction(gt, "depth", True, gt, "depth", alignment="metric", reference=ref)
    assert r["delta1"] == r["delta2"] == r["delta3"] == 1.0
    assert r["rel"] == 0.0 and r["rmse"] == 0.0
    assert r["ord"] == 0.0 and r["d3r"] == 0.0
    assert r["dbe_acc"] == 0.0 and r["dbe_comp"] == 0.0
    assert r["bf1"] == 1.0
    assert r["undefined"] == {}


def test_affine_disparity_is_recovered_exactly(step):
    gt, ref = step
    pred = 2.5 / gt + 0.7  # disparity, affine: the least-squares fit in disparity undoes it
    r = evaluate_prediction(pred, "disparity", False, gt, "depth", reference=ref)
    assert r["alignment"]["space"] == "disparity" and r["alignment"]["mode"] == "least-squares"
    assert r["alignment"]["scale"] == pytest.approx(0.4) and r["alignment"]["shift"] == pytest.approx(-0.28)
    assert r["rel"] == pytest.approx(0.0, abs=1e-12) and r["rmse"] == pytest.approx(0.0, abs=1e-12)
    assert r["delta1"] == 1.0 and r["ord"] == 0.0 and r["d3r"] == 0.0 and r["bf1"] == 1.0


def test_flipped_ordering_is_always_wrong(step):
    gt, ref = step
    pred = -1.0 / gt  # disparity with the order reversed (near is smallest)
    r = evaluate_prediction(pred, "disparity", False, gt, "depth", reference=ref)
    assert r["ord"] == 1.0 and r["d3r"] == 1.0


@pytest.mark.parametrize("k", [1, 3, 6])
def test_step_moved_by_k_pixels(step, k):
    """Canny marks BOTH pixels of a symmetric two-level step (columns c-1 and c): the
    edge is 2 px wide. Shifted by k, the predicted edge pixels c-1+k and c+k lie k-1 and
    k px from the nearest GT edge pixel (c), so DBE_acc = DBE_comp = k - 1/2 exactly."""
    gt, ref = step
    r = evaluate_prediction(step_depth(STEP + k), "depth", True, gt, "depth", alignment="metric", reference=ref)
    assert r["dbe_acc"] == pytest.approx(k - 0.5, abs=1e-12)
    assert r["dbe_comp"] == pytest.approx(k - 0.5, abs=1e-12)
    assert r["bf1"] == 0.0  # no boundary pixel pair in common


def test_step_moved_beyond_ten_pixels_saturates(step):
    gt, ref = step
    r = evaluate_prediction(step_depth(STEP + 12), "depth", True, gt, "depth", alignment="metric", reference=ref)
    assert r["dbe_acc"] == DBE_MAX and r["dbe_comp"] == DBE_MAX


def test_constant_map_documented_values(step):
    """A constant relative disparity: the fit gives the mean GT disparity everywhere."""
    gt, ref = step
    r = evaluate_prediction(np.full((H, W), 5.0), "disparity", False, gt, "depth", reference=ref)
    mean_disp = (1.0 + 0.25) / 2  # half the pixels at depth 1, half at 4
    assert 1.0 / mean_disp == pytest.approx(1.6)  # the predicted depth everywhere
    assert r["delta1"] == 0.0 and r["delta2"] == 0.0 and r["delta3"] == 0.5  # 1.6 < 1.25^3 < 4/1.6
    assert r["rel"] == pytest.approx(0.5 * (0.6 / 1.0 + 2.4 / 4.0))
    assert r["rmse"] == pytest.approx(math.sqrt(0.5 * (0.6**2 + 2.4**2)))
    assert r["ord"] == 1.0 and r["d3r"] == 1.0  # orders nothing, every GT pair has ratio 4
    assert r["dbe_acc"] == DBE_MAX and r["dbe_comp"] == DBE_MAX
    assert r["bf1"] == 0.0
    assert finite_or_none(r)


def test_flat_ground_truth_leaves_structure_metrics_undefined():
    gt = np.full((H, W), 2.0)
    pred = np.random.default_rng(0).uniform(1, 2, (H, W))
    r = evaluate_prediction(pred, "depth", False, gt, "depth")
    for key in ("ord", "d3r", "dbe_acc", "dbe_comp", "bf1"):
        assert r[key] is None and key in r["undefined"]
    assert r["delta1"] is not None and finite_or_none(r)


def test_sparse_ground_truth_scores_values_only():
    gt = step_depth()
    holes = np.random.default_rng(1).random((H, W)) > 0.2  # ~20 % valid, like KITTI
    gt[holes] = 0.0
    r = evaluate_prediction(1.0 / step_depth(), "disparity", False, gt, "depth")
    assert 0.15 < r["valid_fraction"] < 0.25
    assert r["rel"] == pytest.approx(0.0, abs=1e-12) and r["delta1"] == 1.0
    for key in ("ord", "d3r", "dbe_acc", "dbe_comp", "bf1"):
        assert r[key] is None and "sparse" in r["undefined"][key]


def test_no_valid_pixel_gives_all_none():
    gt = np.zeros((20, 30))
    gt[0, 0] = np.nan
    r = evaluate_prediction(np.ones((20, 30)), "disparity", False, gt, "depth")
    assert all(r[k] is None for k in METRIC_KEYS) and set(r["undefined"]) == set(METRIC_KEYS)


def test_invalid_pixels_are_ignored(step):
    gt, _ = step
    gt = gt.copy()
    gt[10:20, 10:30] = 0.0
    gt[40:50, 70:90] = np.inf
    pred = step_depth()
    pred[10:20, 10:30] = 50.0  # wildly wrong only where the GT is invalid
    r = evaluate_prediction(pred, "depth", True, gt, "depth", alignment="metric")
    assert r["rel"] == 0.0 and r["delta1"] == 1.0 and r["ord"] == 0.0 and r["d3r"] == 0.0


def test_prediction_is_resized_to_gt_first(step):
    gt, ref = step
    half = 1.0 / step_depth()[::2, ::2]
    r = evaluate_prediction(half, "disparity", False, gt, "depth", reference=ref)
    assert r["delta1"] > 0.95 and r["d3r"] == 0.0
    assert resize_bilinear(np.ones((3, 5)), (6, 10)).shape == (6, 10)


def test_alignment_modes():
    gt = step_depth() * 2.0  # metric depth 2 / 8
    ref = prepare_ground_truth(gt, "depth")
    metric = evaluate_prediction(gt / 2.0, "depth", True, gt, "depth", alignment="metric", reference=ref)
    scale = evaluate_prediction(gt / 2.0, "depth", True, gt, "depth", alignment="scale", reference=ref)
    auto = evaluate_prediction(gt / 2.0, "depth", True, gt, "depth", reference=ref)
    assert metric["alignment"]["mode"] == "metric" and metric["rel"] == pytest.approx(0.5)
    assert scale["alignment"] == {"mode": "scale", "space": "depth", "scale": pytest.approx(2.0), "shift": 0.0, "floor": 2e-3}
    assert scale["rel"] == pytest.approx(0.0, abs=1e-12)
    assert auto["alignment"]["mode"] == "least-squares" and auto["alignment"]["space"] == "depth"
    with pytest.raises(ValueError):
        evaluate_prediction(gt, "depth", True, gt, "depth", alignment="median")


def test_disparity_ground_truth(step):
    gt_depth, _ = step
    gt_disp = 1.0 / gt_depth
    r = evaluate_prediction(3.0 * gt_disp + 1.0, "disparity", False, gt_disp, "disparity")
    assert r["rel"] == pytest.approx(0.0, abs=1e-12) and r["d3r"] == 0.0 and r["bf1"] == 1.0


def test_boundary_f1_counts_only_directions_present(step):
    """A single vertical step has boundaries in one direction only; the exact map must
    still score 1 (Depth Pro's max(count, 1) would give 2/5) and a half-found edge less."""
    gt, ref = step
    assert boundary_f1(1.0 / gt, ref) == 1.0
    partial = gt.copy()
    partial[: H // 2, STEP:] = 1.0  # the upper half of the step is missing
    score = boundary_f1(1.0 / partial, ref)
    # Recall: only the lower half of the GT edge is found -> 1/2 (one direction has GT
    # boundaries). Precision: the found half is right (1), but the new horizontal step
    # at row H/2 is a false boundary in a vertical direction (0) -> 1/2. F1 = 1/2 at
    # every threshold (all ratios here are 4).
    assert score == pytest.approx(0.5)


def test_non_finite_prediction_is_sanitised(step):
    gt, ref = step
    pred = 1.0 / step_depth()
    pred[5, 5] = np.nan
    pred[6, 6] = np.inf
    r = evaluate_prediction(pred, "disparity", False, gt, "depth", reference=ref)
    # Both pixels take the median of the finite ones, (1 + 0.25) / 2: wrong, but finite.
    assert finite_or_none(r) and r["delta1"] == pytest.approx(1 - 2 / (H * W))
