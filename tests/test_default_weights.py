"""Regression guard for the bundled default weights: on a VALIDATION scene (never seen in
training) refined with the simulated predictor, SDDR one-stage must beat the freq_merge
baseline on D3R, so a quality regression cannot land silently."""
from __future__ import annotations

from sddr_pipeline.data import open_dataset
from sddr_pipeline.evaluation.baselines import GUIDED_EPS
from sddr_pipeline.evaluation.metrics import evaluate_prediction
from sddr_pipeline.evaluation.runner import method_maps
from sddr_pipeline.inference import RefineOptions
from sddr_pipeline.models import Refiner
from sddr_pipeline.predictors import get_predictor


def test_bundled_weights_load_as_small_fp16():
    refiner = Refiner.from_pretrained("default")
    assert refiner.config.name == "sddr-small"
    assert refiner.version.startswith("sddr-small@")


def test_bundled_weights_beat_freq_merge_on_d3r(shared_data):
    sample = open_dataset(shared_data / "middlebury2014q")[0]
    predictor = get_predictor("simulated")
    refiner = Refiner.from_pretrained("default")
    options = RefineOptions(low_res=384, high_res=1024, edges=False).resolved(predictor, refiner)
    maps, _ = method_maps(sample.image(), sample.context(), predictor, refiner, options, (None, GUIDED_EPS))
    kind = predictor.kind
    scores = {
        name: evaluate_prediction(maps[name], kind.space, kind.metric, sample.gt, sample.gt_kind)
        for name in ("low", "freq_merge", "sddr_one_stage")
    }
    d3r = {name: s["d3r"] for name, s in scores.items()}
    assert None not in d3r.values(), d3r
    assert d3r["sddr_one_stage"] < d3r["freq_merge"], d3r
    assert scores["sddr_one_stage"]["delta1"] >= scores["low"]["delta1"] - 0.005, scores
