"""RefineStage / PseudoLabelStage on every batch format Ray Data hands a callable class,
as plain Python (no Ray): numpy dicts as ``read_images`` yields them, pandas and pyarrow
batches of encoded bytes; extra columns pass through, failures become rows."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from sddr_pipeline.pipelines.stage import PseudoLabelStage, RefineStage, decode_image
from sddr_pipeline.shards import decode_array, decode_depth

SPEC = f"python:{Path(__file__).parent / 'stage_helpers.py'}:depth"
RES = {"low_res": 32, "high_res": 64}
RNG = np.random.default_rng(0)
SAME = [(RNG.random((48, 64, 3)) * 255).astype(np.uint8) for _ in range(2)]
OTHER = (RNG.random((40, 56, 3)) * 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    from sddr_pipeline.models import Refiner

    return str(Refiner.from_config("sddr-small").save_pretrained(tmp_path_factory.mktemp("weights")))


@pytest.fixture(scope="module")
def stage(weights) -> RefineStage:
    return RefineStage(SPEC, weights, device="cpu", torch_threads=1, **RES)


@pytest.fixture(scope="module")
def expected(weights):
    from sddr_pipeline import get_predictor, refine
    from sddr_pipeline.models import Refiner

    predictor, refiner = get_predictor(SPEC), Refiner.from_pretrained(weights)
    return lambda image: refine(image, predictor, refiner, edges=False, **RES)


@pytest.fixture(autouse=True)
def no_temporary_files(monkeypatch):
    """Decoding happens in memory: any temporary file is a failure."""
    def refuse(*args, **kwargs):
        raise AssertionError("the stage made a temporary file")

    for name in ("mkstemp", "NamedTemporaryFile", "TemporaryFile", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)


def test_numpy_batch_like_read_images(stage, expected):
    poses = np.stack([np.eye(4), 2 * np.eye(4)])
    batch = {"image": np.stack(SAME), "path": np.array(["a.png", "b.png"]), "pose": poses}
    out = stage(batch)
    assert isinstance(out, dict) and "image" not in out and "confidence" not in out
    assert out["path"] is batch["path"] and out["pose"] is poses
    assert out["depth"].dtype == np.float32 and out["depth"].shape == (2, 48, 64)
    assert list(out["error_stage"]) == [None, None] and list(out["id"]) == ["a.png", "b.png"]
    for image, depth, scale, shift, space in zip(SAME, out["depth"], out["scale"], out["shift"], out["space"]):
        ref = expected(image)
        np.testing.assert_allclose(depth, ref.depth, rtol=1e-5, atol=1e-6)
        assert (scale, shift) == pytest.approx(ref.alignment, rel=1e-5) and space == ref.space
    assert not out["metric"].any()


def test_numpy_batch_mixed_sizes_and_a_bad_image(stage, expected):
    images = np.empty(3, dtype=object)
    images[0], images[1], images[2] = SAME[0], OTHER, np.zeros((5, 5), np.float64)
    out = stage({"image": images, "user_id": np.array([7, 8, 9])})
    assert list(out["user_id"]) == [7, 8, 9]
    assert out["depth"].dtype == object and [d.shape for d in out["depth"]] == [(48, 64), (40, 56), (0, 0)]
    np.testing.assert_allclose(out["depth"][1], expected(OTHER).depth, rtol=1e-5, atol=1e-6)
    assert list(out["error_stage"]) == [None, None, "decode"] and "uint8" in out["error_reason"][2]


def test_numpy_confidence_when_asked(weights):
    out = RefineStage(SPEC, weights, device="cpu", torch_threads=1, confidence=True, **RES)({"image": np.stack(SAME)})
    assert out["confidence"].shape == (2, 48, 64) and 0 <= out["confidence"].min() <= out["confidence"].max() <= 1


def test_pyarrow_batch_keeps_columns_and_reports_undecodable(stage, expected):
    batch = pa.table({"image": [png(SAME[0]), b"not an image", png(OTHER)], "id": ["a", "bad", "c"],
                      "intrinsics": [[500.0, 500.0, 32.0, 24.0]] * 3, "user": [1, 2, 3]})
    out = stage(batch)
    assert isinstance(out, pa.Table)
    assert out.column("intrinsics").equals(batch.column("intrinsics")) and out.column("user").equals(batch.column("user"))
    rows = {r["id"]: r for r in out.to_pylist()}
    assert rows["bad"]["error_stage"] == "decode" and "not a recognised image format" in rows["bad"]["error_reason"]
    assert rows["bad"]["depth"] is None
    np.testing.assert_allclose(decode_depth(rows["a"]), expected(SAME[0]).depth, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(decode_depth(rows["c"]), expected(OTHER).depth, rtol=1e-5, atol=1e-6)
    assert (rows["c"]["width"], rows["c"]["height"]) == (56, 40)


def test_pandas_batch(stage, expected):
    batch = pd.DataFrame({"image": [png(SAME[1]), png(OTHER)], "id": ["x", "y"], "fx": [1.5, 2.5]})
    out = stage(batch)
    assert isinstance(out, pd.DataFrame) and list(out["fx"]) == [1.5, 2.5] and "image" in out.columns
    assert out["error_stage"].isna().all()
    np.testing.assert_allclose(decode_array(out["depth"][0]), expected(SAME[1]).depth, rtol=1e-5, atol=1e-6)


def test_pseudolabel_stage_numpy_batch(weights):
    stage = PseudoLabelStage(SPEC, weights, device="cpu", torch_threads=1, steps=1, regions=4, **RES)
    out = stage({"image": np.stack(SAME), "path": np.array(["a", "b"])})
    assert out["depth"].shape == (2, 48, 64) and list(out["error_stage"]) == [None, None]
    assert out["gs"].dtype == np.float32 and list(out["path"]) == ["a", "b"] and "image" in out


def test_decode_image_in_memory_applies_exif():
    pixels = (RNG.random((20, 30, 3)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", exif=exif, quality=100)
    assert decode_image(buf.getvalue(), "rotated.jpg").shape == (30, 20, 3)


def test_refine_batch_equals_refine_per_image(weights):
    """Same-size images in one predictor/refiner batch give what :func:`refine` gives each."""
    from sddr_pipeline import get_predictor, refine
    from sddr_pipeline.inference import RefineOptions, refine_batch
    from sddr_pipeline.models import Refiner

    predictor, refiner = get_predictor(SPEC), Refiner.from_pretrained(weights)
    calls: list[int] = []
    batched = predictor.predict_batch
    predictor.predict_batch = lambda images, *a, **k: calls.append(len(images)) or batched(images, *a, **k)
    options = RefineOptions(edges=False, confidence=True, **RES)
    images = [SAME[0], OTHER, SAME[1], np.zeros((4, 4), np.uint8)]
    results = refine_batch(images, predictor, refiner, options)
    assert sorted(calls) == [2, 2] and isinstance(results[3], Exception)
    for image, result in zip(images[:3], results):
        ref = refine(image, predictor, refiner, options)
        for name in ("depth", "confidence", "normalized", "omega"):
            np.testing.assert_allclose(getattr(result, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
        assert result.alignment == pytest.approx(ref.alignment, rel=1e-5) and result.space == ref.space
