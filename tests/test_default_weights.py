"""Regression guard for the bundled default weights.

Two layers: (1) the report that ships with the weights (``docs/quality/bar.json``, rendered
into docs/QUALITY.md and the model card by ``scripts/quality_report.py``) must be the
report OF these weights, and its count of passing checks may not fall below what the
current weights reached; (2) on VALIDATION sets (never seen in training) refined here
with the simulated predictor (seed-0 means over their images), the weights must still do what that report says: never
worse than LOW where the inputs agree, sharper than LOW and ``freq_merge`` at default
noise. New weights therefore cannot land without a new full sweep, and a sweep that got
worse cannot land either.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sddr_pipeline.evaluation import evaluate_dataset
from sddr_pipeline.models import Refiner
from sddr_pipeline.models.refiner import DEFAULT_WEIGHTS_DIR

REPO = Path(__file__).resolve().parents[1]
BAR = REPO / "docs" / "quality" / "bar.json"
#: checks of the bar the shipped weights' sweep passes (docs/QUALITY.md); new weights must reach it
PASSING_CHECKS_FLOOR = 92


@pytest.fixture(scope="module")
def refiner() -> Refiner:
    return Refiner.from_pretrained("default")


def test_bundled_weights_are_small_fast_gated_fp16(refiner: Refiner) -> None:
    assert refiner.config.name == "sddr-small-fast"
    assert refiner.config.fusion == "gated"
    assert refiner.config.range_clamp == 0.0
    weights = DEFAULT_WEIGHTS_DIR / "model.safetensors"
    assert weights.stat().st_size <= 10 * 2**20
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes <= {"F16", "I64"}, dtypes


def test_quality_report_is_the_report_of_the_bundled_weights(refiner: Refiner) -> None:
    record = json.loads(BAR.read_text())
    assert record["refiner"] == refiner.version, (
        "docs/quality/bar.json was not made with the bundled weights: run scripts/quality_report.py")
    assert record["seeds"] == [0, 1]
    assert record.get("fusion_temperature", 1.0) == refiner.config.fusion_temperature, (
        "docs/quality/bar.json was scored at another fusion_temperature than the bundled config's")
    cells = {(c["dataset"], tuple(c["setting"].values())) for c in record["cells"]}
    assert len(cells) == 20, "the report must cover 5 sources x 4 noise settings"
    assert all("sddr_two_stage" in c["means"] for c in record["cells"])
    passed = sum(v is True for c in record["cells"] for v in c["checks"].values())
    assert passed >= PASSING_CHECKS_FLOOR
    never_worse = [(c["dataset"], c["setting"], k) for c in record["cells"] for k in ("rel<=1.02low", "d3r<=low")
                   if c["checks"].get(k) is False]
    assert not never_worse, f"the bundled weights are worse than LOW in {never_worse}"
    text = (REPO / "docs" / "QUALITY.md").read_text()
    assert f"`{record['refiner']}`" in text, "docs/QUALITY.md is stale: run scripts/quality_report.py --from-json"
    card = (DEFAULT_WEIGHTS_DIR / "MODEL_CARD.md").read_text()
    assert f"{passed} of" in card, "the model card's table is stale: run scripts/quality_report.py --from-json"


def _means(refiner: Refiner, dataset: str, noise: str, shared_data: Path) -> dict[str, dict]:
    """Seed-0 means over the dataset's images, as one cell of the sweep computes them."""
    results = evaluate_dataset(shared_data / dataset, f"simulated:{noise},seed=0", refiner, two_stage=False,
                               progress=False)
    return results["methods"]


@pytest.mark.parametrize("dataset", ["middlebury2014q", "rgbd_sequence_sample"])
def test_no_noise_the_refined_map_is_no_worse_than_low(refiner: Refiner, dataset: str, shared_data: Path) -> None:
    m = _means(refiner, dataset, "cons=0,edge=0,texture=0", shared_data)
    assert m["sddr_one_stage"]["rel"] <= 1.1 * m["low"]["rel"], m
    assert m["sddr_one_stage"]["d3r"] <= m["low"]["d3r"], m


@pytest.mark.parametrize("dataset", ["middlebury2014q", "rgbd_sequence_sample"])
def test_default_noise_the_refined_map_is_sharper_than_low_and_freq_merge(refiner: Refiner, dataset: str,
                                                                         shared_data: Path) -> None:
    m = _means(refiner, dataset, "cons=0.15,edge=2,texture=0.3", shared_data)
    d3r = {name: m[name]["d3r"] for name in ("low", "freq_merge", "sddr_one_stage")}
    assert None not in d3r.values(), d3r
    assert d3r["sddr_one_stage"] < min(d3r["low"], d3r["freq_merge"]), d3r
    assert m["sddr_one_stage"]["rel"] <= 1.02 * m["low"]["rel"], m
