"""Property tests pinning the simulated predictor's noise model with measured numbers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt, gaussian_filter

from sddr_pipeline.predictors import PredictorError, SampleContext, get_predictor, working_size
from sddr_pipeline.predictors.simulated import FEATHER, draw_high_noise, gt_disparity, noise_rng, resize_map

H, W = 240, 320
# low=128, high=512 puts the regime threshold at 256, so r=320 is HIGH at the image's own
# size (no resampling between the gt and the output) and r=192 is LOW.
HIGH_OPTS = "low=128,high=512"


def ramp_gt() -> np.ndarray:
    """Disparity ramp 1..2 along x: normalised gt runs 0..1."""
    return np.tile(1.0 + np.arange(W) / (W - 1), (H, 1))


def textured_image(seed: int = 0, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def flat_image(shape: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.full((*shape, 3), 128, dtype=np.uint8)


@pytest.mark.parametrize("cons", [0.1, 0.3])
def test_high_region_inconsistency_has_std_cons(cons: float) -> None:
    """std of log(high/gt) across regions == cons (within 20 %), texture = edge = 0.

    Measured per Voronoi cell as the median of log(high/gt) over the cell's core (pixels
    farther than 2.5 feather sigmas from any other cell, where the feathering leaves d_r
    untouched). The smooth field f (std cons/2, <= 0.75 cycles per long side) also shifts
    cell medians; it nearly cancels between ADJACENT cells, so the estimator is
    sqrt(mean((m_a - m_b)^2) / 2) over adjacent pairs, pooled over 8 seeds. The pixel-level
    total, RMS of log(high/gt) over cores, must match sqrt(cons^2 + (cons/2)^2).
    """
    gt = ramp_gt()
    gtn = gt_disparity(gt, "disparity")
    sq_diffs, core_values = [], []
    for seed in range(8):
        pred = get_predictor(f"simulated:{HIGH_OPTS},cons={cons},texture=0,edge=0,seed={seed}")
        ctx = SampleContext(name="ramp", gt=gt, gt_kind="disparity")
        out = pred.predict(flat_image(), W, ctx)
        assert out.shape == (H, W) and out.dtype == np.float32
        valid = gtn > 0.05
        log_ratio = np.where(valid, np.log(np.maximum(out, 1e-12) / np.maximum(gtn, 1e-12)), np.nan)
        labels = draw_high_noise((H, W), noise_rng(seed, "ramp", (0, 0, H, W), "high"), cons).labels
        core_dist = 2.5 * FEATHER * max(H, W)
        medians = {}
        for k in np.unique(labels):
            core = (distance_transform_edt(labels == k) > core_dist) & valid
            if core.sum() >= 30:
                medians[k] = np.median(log_ratio[core])
                core_values.append(log_ratio[core])
        pairs = set(zip(labels[:, :-1].ravel(), labels[:, 1:].ravel())) | set(
            zip(labels[:-1].ravel(), labels[1:].ravel())
        )
        for a, b in {(min(p), max(p)) for p in pairs if p[0] != p[1]}:
            if a in medians and b in medians:
                sq_diffs.append((medians[a] - medians[b]) ** 2)
    assert len(sq_diffs) > 60
    regional = np.sqrt(np.mean(sq_diffs) / 2)
    assert regional == pytest.approx(cons, rel=0.2)
    total = np.sqrt(np.mean(np.concatenate(core_values) ** 2))
    assert total == pytest.approx(cons * np.sqrt(1.25), rel=0.2)


def rise_widths(profile_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row 10-90 % rise width and 50 % crossing of a rising step, linear interpolation."""
    widths, centres = [], []
    for p in profile_rows:
        lo, hi = np.median(p[:40]), np.median(p[-40:])
        t = (p - lo) / (hi - lo)

        def crossing(level: float) -> float:
            i = int(np.argmax(t >= level))
            return i - 1 + (level - t[i - 1]) / (t[i] - t[i - 1])

        widths.append(crossing(0.9) - crossing(0.1))
        centres.append(crossing(0.5))
    return np.array(widths), np.array(centres)


@pytest.mark.parametrize("edge", [2, 4])
def test_low_step_edge_rise_is_2_56_edge(edge: int) -> None:
    """A vertical step's 10-90 % rise in LOW is 2.56 x edge px wide (the Gaussian blur),
    and the edge is displaced by a smooth field of at most edge/2 px."""
    h, w = 256, 384
    gt = np.where(np.arange(w) < w // 2, 0.2, 1.0)[None, :].repeat(h, axis=0)
    widths, shifts = [], []
    for seed in range(3):
        pred = get_predictor(f"simulated:cons=0,texture=0,edge={edge},seed={seed}")
        out = pred.predict(flat_image((h, w)), 384, SampleContext(name="step", gt=gt, gt_kind="disparity"))
        assert out.shape == (h, w)
        wd, centre = rise_widths(out.astype(np.float64))
        widths.append(np.median(wd))
        shifts.append(centre - (w // 2 - 0.5))
    assert np.mean(widths) == pytest.approx(2.5631 * edge, rel=0.2)
    shifts = np.concatenate(shifts)
    assert np.abs(shifts).max() <= edge / 2 + 0.25
    assert np.abs(shifts).max() > edge / 8


def test_low_area_downsampling_fades_thin_structures() -> None:
    """LOW at 1/4 size with edge=0 is exactly the area average: a 1-px line keeps 1/4 contrast."""
    gt = np.full((256, 384), 1.0)
    gt[:, 101] = 2.0
    pred = get_predictor("simulated:edge=0")
    out = pred.predict(flat_image((256, 384)), 96, SampleContext(name="line", gt=gt, gt_kind="disparity"))
    assert out.shape == (64, 96)
    assert out.max() == pytest.approx(0.25, abs=1e-6)
    np.testing.assert_allclose(out, resize_map(gt_disparity(gt, "disparity"), (64, 96)), atol=1e-6)


def luminance_highpass_ref(image: np.ndarray) -> np.ndarray:
    lum = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    hp = lum - gaussian_filter(lum, 2.0, mode="nearest")
    return hp / hp.std()


def test_high_texture_leak_correlates_with_image_highpass() -> None:
    gt = ramp_gt()
    image = textured_image(3)
    hp = luminance_highpass_ref(image).ravel()
    ctx = SampleContext(name="tex", gt=gt, gt_kind="disparity")
    clean = get_predictor(f"simulated:{HIGH_OPTS},texture=0").predict(image, W, ctx)
    leaky = get_predictor(f"simulated:{HIGH_OPTS},texture=0.3").predict(image, W, ctx)
    assert abs(np.corrcoef(clean.ravel(), hp)[0, 1]) < 0.05
    assert np.corrcoef(leaky.ravel(), hp)[0, 1] > 0.2


def test_regime_threshold_is_geometric_mean() -> None:
    """r <= sqrt(low*high) is LOW (edge=0: exactly the resized gt), above it HIGH (noisy)."""
    gt = ramp_gt()
    ctx = SampleContext(name="r", gt=gt, gt_kind="disparity")
    pred = get_predictor("simulated:low=100,high=400,edge=0,cons=0.3,texture=0")
    assert pred.default_resolutions == (100, 400)
    at_threshold = pred.predict(flat_image(), 200, ctx)
    np.testing.assert_allclose(at_threshold, resize_map(gt_disparity(gt, "disparity"), (150, 200)), atol=1e-6)
    above = pred.predict(flat_image(), 201, ctx)
    assert above.shape == working_size(H, W, 201)
    reference = resize_map(gt_disparity(gt, "disparity"), above.shape)
    assert np.abs(above - reference).mean() > 0.02


def test_determinism_and_independence() -> None:
    gt = ramp_gt()
    image = textured_image(1)
    pred = get_predictor(f"simulated:{HIGH_OPTS},seed=7")
    full = SampleContext(name="a", gt=gt, gt_kind="disparity")
    first = pred.predict(image, W, full)
    np.testing.assert_array_equal(first, pred.predict(image, W, full))
    np.testing.assert_array_equal(first, get_predictor(f"simulated;{HIGH_OPTS},seed=7").predict(image, W, full))
    renamed = pred.predict(image, W, SampleContext(name="b", gt=gt, gt_kind="disparity"))
    assert np.abs(renamed - first).mean() > 1e-3
    reseeded = get_predictor(f"simulated:{HIGH_OPTS},seed=8").predict(image, W, full)
    assert np.abs(reseeded - first).mean() > 1e-3
    box_a, box_b = (0, 0, 120, 160), (0, 1, 120, 161)
    win_a = pred.predict(image[:120, :160], 320, full.cropped(box_a))
    np.testing.assert_array_equal(win_a, pred.predict(image[:120, :160], 320, full.cropped(box_a)))
    # A window shifted by one pixel sees nearly the same gt but an independent partition.
    clean = get_predictor(f"simulated:{HIGH_OPTS},seed=7,texture=0")
    errors = []
    for y0, x0, y1, x1 in (box_a, box_b):
        out = clean.predict(image[y0:y1, x0:x1], 320, full.cropped((y0, x0, y1, x1)))
        reference = resize_map(gt_disparity(gt[y0:y1, x0:x1], "disparity"), out.shape)
        errors.append(np.log(out[:, 10:] / reference[:, 10:]).ravel())
    assert np.isfinite(errors[0]).all() and np.isfinite(errors[1]).all()
    assert abs(np.corrcoef(errors[0], errors[1])[0, 1]) < 0.9


def test_crop_context_gives_crop_working_size_and_uses_crop_gt() -> None:
    gt = np.zeros((256, 384))
    gt[:, :192] = 2.0
    gt[:, 192:] = 4.0
    full = SampleContext(name="c", gt=gt, gt_kind="depth")
    pred = get_predictor("simulated:edge=0")
    window = full.cropped((0, 0, 128, 192))
    out = pred.predict(flat_image((128, 192)), 96, window)
    assert out.shape == working_size(128, 192, 96) == (64, 96)
    assert np.all(out == 1.0)  # the window's gt is one constant plane
    nested = window.cropped((0, 96, 128, 192))
    assert nested.crop == (0, 96, 128, 192)
    assert pred.predict(flat_image((128, 96)), 96, nested).shape == (96, 72)


def test_shapes_finite_constant_and_invalid_gt() -> None:
    pred = get_predictor("simulated")
    assert pred.default_resolutions == (384, 1024)
    assert pred.kind.space == "disparity" and not pred.kind.metric
    constant = SampleContext(name="k", gt=np.full((H, W), 3.0))
    for r in (384, 1024):
        out = pred.predict(textured_image(), r, constant)
        assert out.shape == working_size(H, W, r) and out.dtype == np.float32
        assert np.isfinite(out).all() and (out >= 0).all()
    holes = np.linspace(1.0, 10.0, H * W).reshape(H, W)
    holes[50:90, 50:90] = 0.0
    holes[0, :] = np.nan
    holes[1, :] = np.inf
    out = pred.predict(textured_image(), 1024, SampleContext(name="h", gt=holes, gt_kind="depth"))
    assert np.isfinite(out).all()
    disp = gt_disparity(holes, "depth")
    assert disp.min() == 0.0 and disp.max() == 1.0 and np.isfinite(disp).all()
    assert disp[55, 60] == pytest.approx(disp[49, 60])  # filled from the nearest valid pixel


@pytest.mark.parametrize(
    "spec, message",
    [
        ("simulated:cons=0.6", "out of range"),
        ("simulated:edge=-1", "out of range"),
        ("simulated;texture=2", "out of range"),
        ("simulated:low=2000", "must not exceed"),
        ("simulated:seed=x", "integer"),
        ("simulated:noise=1", "unknown option"),
        ("simulated:cons=0.1;cons=0.2", "given twice"),
    ],
)
def test_bad_options(spec: str, message: str) -> None:
    with pytest.raises(PredictorError, match=message):
        get_predictor(spec)


def test_missing_gt_is_a_clear_error() -> None:
    pred = get_predictor("simulated")
    for ctx in (None, SampleContext(name="no-gt")):
        with pytest.raises(PredictorError, match="simulated needs ground truth; use a dataset with gt"):
            pred.predict(flat_image(), 384, ctx)
    with pytest.raises(PredictorError, match="does not match the image"):
        pred.predict(flat_image(), 384, SampleContext(name="x", gt=np.ones((100, 100))))


def test_voronoi_labels_match_a_kd_tree_query():
    from scipy.spatial import cKDTree

    from sddr_pipeline.predictors.simulated import voronoi_labels

    for shape, seed in (((45, 61), 0), ((128, 97), 1), ((3, 200), 2)):
        labels = voronoi_labels(shape, np.random.default_rng(seed))
        seeds = np.random.default_rng(seed).uniform(size=(16, 2)) * shape
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        expect = cKDTree(seeds).query(np.stack([yy.ravel() + 0.5, xx.ravel() + 0.5], axis=1))[1].reshape(shape)
        np.testing.assert_array_equal(labels, expect)
