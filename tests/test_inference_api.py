"""The Python inference API on a real (random-init) refiner: sizes, units, modes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sddr_pipeline.inference import ScaleReference, TwoStageConfig, refine
from sddr_pipeline.inference.core import restore_units
from sddr_pipeline.models import Refiner
from sddr_pipeline.predictors import BasePredictor, OutputKind, SampleContext


class PlanePredictor(BasePredictor):
    """Predicts the exact depth (or disparity) of a slanted plane, at any working size."""

    def __init__(self, kind: OutputKind):
        self.kind = kind
        self.name = f"plane-{kind.space}"
        self.calls: list[tuple] = []

    def predict(self, image, resolution, context=None):
        from sddr_pipeline.predictors import working_size

        h, w = working_size(*image.shape[:2], resolution)
        self.calls.append((image.shape[:2], resolution, context.crop if context else None))
        y0, x0, y1, x1 = context.crop if context and context.crop else (0, 0, *image.shape[:2])
        ys = np.linspace(y0, y1, h, dtype=np.float32)[:, None]
        xs = np.linspace(x0, x1, w, dtype=np.float32)[None, :]
        depth = 2.0 + 0.01 * ys + 0.002 * xs
        return depth if self.kind.space == "depth" else 1.0 / depth


@pytest.fixture(scope="module")
def refiner():
    torch.manual_seed(0)
    return Refiner.from_config("sddr-small", seed=0)


@pytest.mark.parametrize("shape", [(37, 101), (120, 64), (200, 300)])
@pytest.mark.parametrize("mode", ["one-stage", "two-stage"])
def test_any_size_round_trip(refiner, shape, mode):
    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    pred = PlanePredictor(OutputKind("disparity", False))
    res = refine(image, pred, refiner, mode=mode, low_res=32, high_res=96)
    for arr in (res.depth, res.normalized, res.omega):
        assert arr.shape == shape and np.isfinite(arr).all()
    assert res.mode == mode and res.space == "disparity" and not res.metric
    assert 0.0 <= res.omega.min() and res.omega.max() <= 1.0


def test_two_stage_runs_windows_with_crop_contexts(refiner):
    image = np.zeros((90, 120, 3), np.uint8)
    pred = PlanePredictor(OutputKind("disparity", False))
    res = refine(image, pred, refiner, mode="two-stage", low_res=32, high_res=64, context=SampleContext(name="x"),
                 two_stage=TwoStageConfig(steps=2))
    crops = [c for c in pred.calls if c[2] is not None]
    assert len(crops) == 4 + 9  # (s+1)^2 windows for s = 1, 2
    assert len(res.edge_history) == 3 and res.edges.shape == (90, 120)


def test_metric_predictor_output_is_metric_depth(refiner):
    image = np.zeros((64, 80, 3), np.uint8)
    pred = PlanePredictor(OutputKind("depth", True))
    res = refine(image, pred, refiner, low_res=32, high_res=64)
    assert res.metric and res.space == "depth" and res.scale_source == "metric-predictor"
    truth = pred.predict(image, 80)
    # a random-init refiner distorts shape, but the robust fit keeps the metric scale
    assert np.median(res.depth) == pytest.approx(float(np.median(truth)), rel=0.15)


def test_restore_units_exact_for_affine_refined_map():
    low = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float() + 0.5
    refined = (low - 0.5) * 4.0  # the same map, normalised differently
    out, space, metric, source, (a, b) = restore_units(refined, low, OutputKind("disparity", False), (8, 8))
    assert torch.allclose(out, low, atol=1e-5) and (a, b) == (pytest.approx(0.25, abs=1e-5), pytest.approx(0.5, abs=1e-5))
    assert (space, metric, source) == ("disparity", False, "predictor")


def test_scale_reference_gives_metric_depth():
    truth = torch.linspace(2.0, 6.0, 100).reshape(1, 1, 10, 10)
    refined = 1.0 / truth * 7.0 - 0.1  # affine in disparity
    pts = np.array([[r, c] for r in range(0, 10, 3) for c in range(0, 10, 3)], dtype=float)
    ref = ScaleReference(points=pts, depth=truth[0, 0].numpy()[pts[:, 0].astype(int), pts[:, 1].astype(int)])
    out, space, metric, source, _ = restore_units(refined, 1.0 / truth, OutputKind("disparity", False), (10, 10), ref)
    assert (space, metric, source) == ("depth", True, "reference")
    assert torch.allclose(out, truth, rtol=1e-4)
    with pytest.raises(ValueError, match="at least 3"):
        restore_units(refined, truth, OutputKind(), (10, 10), ScaleReference(np.zeros((2, 2)), np.ones(2)))


def test_bad_mode_and_resolutions(refiner):
    image = np.zeros((32, 32, 3), np.uint8)
    pred = PlanePredictor(OutputKind())
    with pytest.raises(ValueError, match="unknown mode"):
        refine(image, pred, refiner, mode="three-stage")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not exceed"):
        refine(image, pred, refiner, low_res=512, high_res=256)


class WindowPredictor(PlanePredictor):
    """The plane for the whole image; ``window`` (a constant or NaN map) for its windows."""

    def __init__(self, window: float):
        super().__init__(OutputKind("disparity", False))
        self.window = window

    def predict(self, image, resolution, context=None):
        plane = super().predict(image, resolution, context)
        return np.full_like(plane, self.window) if context is not None and context.crop else plane


def test_flat_windows_are_refined_but_non_finite_ones_are_named_errors(refiner):
    from sddr_pipeline.predictors import PredictorError

    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    args = dict(mode="two-stage", low_res=32, high_res=64, context=SampleContext(name="x"), two_stage=TwoStageConfig(steps=1))
    assert np.isfinite(refine(image, WindowPredictor(0.5), refiner, **args).depth).all()
    with pytest.raises(PredictorError, match=r"^predictor 'plane-disparity' on windows at 64px \(window 0\) returned "
                                             r"no finite value \(all \d+ pixels are NaN or inf\)$"):
        refine(image, WindowPredictor(np.nan), refiner, **args)
