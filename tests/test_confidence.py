"""Confidence of refined depth: definition properties and validation by sparsification."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sddr_pipeline.confidence import ause, confidence, evaluate_confidence, sparsification, sparsification_report
from sddr_pipeline.data import open_dataset
from sddr_pipeline.inference import RefineResult
from sddr_pipeline.models import Refiner
from sddr_pipeline.predictors import OutputKind, get_predictor


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _result(normalized: np.ndarray, low: np.ndarray, high: np.ndarray, alignment=(1.0, 0.5)) -> RefineResult:
    a, b = alignment
    return RefineResult(
        depth=(1.0 / (a * normalized + b)).astype(np.float32), space="depth", metric=True, scale_source="reference",
        normalized=normalized.astype(np.float32), omega=np.zeros_like(normalized, np.float32), edges=None,
        low=low.astype(np.float32), high=high.astype(np.float32), mode="one-stage", alignment=alignment,
        kind=OutputKind("disparity", False),
    )


def test_confidence_is_high_where_predictions_agree_and_low_at_edges_and_disagreement():
    n = np.zeros((64, 64))
    n[:, 32:] = 1.0  # a depth edge
    low = n[::4, ::4]
    high = n.copy()
    high[4:12, 4:12] += 0.3  # the HIGH prediction has a local inconsistency the result did not take
    conf = confidence(_result(n, low, high))
    assert conf.dtype == np.float32 and conf.shape == (64, 64) and conf.min() >= 0 and conf.max() <= 1
    assert conf[40, 10] > 0.9 and conf[40, 50] > 0.9  # flat, all three agree
    assert conf[40, 31] < 0.2 and conf[40, 32] < 0.2  # at the edge (LOW knows it to ~1.5 of its pixels)
    assert conf[8, 8] < conf[40, 10] - 0.05  # where HIGH disagrees
    n2 = n.copy()
    n2[50:58, 4:12] += 0.3  # the result departs from LOW (and HIGH) here
    conf2 = confidence(_result(n2, low, high))
    assert conf2[54, 8] < 0.5 * conf[54, 8]


def test_far_pixels_are_less_confident_for_the_same_disparity_error():
    rng = np.random.default_rng(0)
    n = np.tile(np.linspace(0.05, 1.0, 64), (64, 1))
    high = n + rng.normal(0, 0.01, n.shape)
    conf = confidence(_result(n, n[::2, ::2], high, alignment=(1.0, 0.0)))
    assert np.median(conf[:, 2:10]) < np.median(conf[:, -10:-2])  # small disparity = far


def test_sparsification_and_ause_basics():
    rng = np.random.default_rng(1)
    err = rng.exponential(1.0, 10_000)
    fr = np.linspace(0, 0.98, 50)
    oracle = sparsification(err, -err, fr)
    assert np.all(np.diff(oracle) <= 1e-12) and oracle[0] == pytest.approx(err.mean())
    assert ause(oracle, oracle, fr) == 0.0
    noisy = -err + rng.normal(0, 0.5, err.size)
    rep = sparsification_report(err, {"noisy": noisy}, fr)
    assert 0 < rep.ause["noisy"] < rep.ause["random"]
    assert rep.ause["random"] == pytest.approx(ause(np.full(50, err.mean()), oracle, fr), rel=0.1)


def test_confidence_ause_beats_random_on_middlebury2014(shared_data):
    """Validation split (never used to choose the confidence's weights): the simulated
    predictor on Middlebury 2014, maps made metric with 200 sparse GT depths."""
    samples = list(open_dataset(shared_data / "middlebury2014q"))
    report = evaluate_confidence(samples, get_predictor("simulated:low=192,high=512"), Refiner.from_config("sddr-small"))
    summary = report.summary()
    print("\nconfidence sparsification (AbsRel):", json.dumps({k: round(v, 5) for k, v in summary["ause"].items()}),
          "ratio to random:", json.dumps({k: round(v, 3) for k, v in summary["ause_ratio_to_random"].items()}))
    assert report.pixels > 500_000
    assert report.ause["confidence"] < 0.5 * report.ause["random"]
    assert report.ause["confidence"] < report.ause["omega"]
    for name, per in report.per_image.items():
        assert per["ause_confidence"] < per["ause_random"], name
