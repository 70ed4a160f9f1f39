"""hf: predictor on tiny random-weight transformers models saved to disk and loaded back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModelForDepthEstimation,
    DepthAnythingConfig,
    Dinov2Config,
    DPTConfig,
    DPTImageProcessor,
)

from sddr_pipeline.predictors import PredictorError, get_predictor, working_size  # noqa: E402

IMAGE = np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)  # 3:4


def _save(tmp: Path, config, processor: DPTImageProcessor | None = None) -> Path:
    torch.manual_seed(0)
    model = AutoModelForDepthEstimation.from_config(config)
    last_conv = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # variance-preserving random weights, so outputs depend on the image
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn_like(param) / param[0].numel() ** 0.5)
        last_conv.bias.fill_(1.0)  # and lift the head above its final ReLU
    model.save_pretrained(tmp)
    (processor or DPTImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])).save_pretrained(tmp)
    return tmp


@pytest.fixture(scope="module")
def depth_anything_dir(tmp_path_factory) -> Path:
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
        patch_size=14, image_size=70, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 64],
        fusion_hidden_size=16, head_hidden_size=8,
    )
    processor = DPTImageProcessor(ensure_multiple_of=14, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return _save(tmp_path_factory.mktemp("depth_anything"), config, processor)


@pytest.fixture(scope="module")
def dpt_dir(tmp_path_factory) -> Path:
    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
        patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 64], fusion_hidden_size=16,
    )
    return _save(tmp_path_factory.mktemp("dpt"), config)


@pytest.fixture(scope="module")
def da_pred(depth_anything_dir: Path):
    return get_predictor(f"hf:{depth_anything_dir}")


def test_depth_anything_shapes_follow_resolution_and_patch_14(depth_anything_dir: Path, da_pred) -> None:
    pred = da_pred
    assert pred.kind.space == "disparity" and not pred.kind.metric
    assert pred.name.startswith(f"hf:{depth_anything_dir}@") and len(pred.name.split("@")[1]) == 12
    small = pred.predict(IMAGE, 70)
    large = pred.predict(IMAGE, 140)
    assert small.shape == (56, 70) == working_size(90, 120, 70, 14)
    assert large.shape == (112, 140) == working_size(90, 120, 140, 14)
    assert small.dtype == np.float32 and large.dtype == np.float32
    assert np.isfinite(small).all() and small.std() > 0


def test_batch_equals_single_and_groups_sizes(da_pred) -> None:
    pred = da_pred
    other = np.ascontiguousarray(IMAGE[::-1])
    portrait = np.ascontiguousarray(IMAGE.transpose(1, 0, 2))
    batch = pred.predict_batch([IMAGE, portrait, other], 70)
    singles = [pred.predict(im, 70) for im in (IMAGE, portrait, other)]
    assert [b.shape for b in batch] == [(56, 70), (70, 56), (56, 70)]
    for b, s in zip(batch, singles):
        np.testing.assert_allclose(b, s, rtol=1e-4, atol=1e-5)
    assert not np.allclose(batch[0], batch[2])


def test_processor_normalisation_is_used(depth_anything_dir: Path, da_pred, tmp_path: Path) -> None:
    """The processor's mean/std reach the model: another mean gives another output."""
    other = tmp_path / "other_norm"
    other.mkdir()
    for f in depth_anything_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((other / "preprocessor_config.json").read_text())
    cfg["image_mean"] = [0.0, 0.0, 0.0]
    (other / "preprocessor_config.json").write_text(json.dumps(cfg))
    a = da_pred.predict(IMAGE, 70)
    b = get_predictor(f"hf:{other}").predict(IMAGE, 70)
    assert np.abs(a - b).max() > 1e-4


def test_metric_config_and_kind_override(tmp_path: Path, depth_anything_dir: Path) -> None:
    cfg = json.loads((depth_anything_dir / "config.json").read_text())
    cfg["depth_estimation_type"] = "metric"
    cfg["max_depth"] = 20
    metric_dir = tmp_path / "metric"
    metric_dir.mkdir()
    for f in depth_anything_dir.iterdir():
        (metric_dir / f.name).write_bytes(f.read_bytes())
    (metric_dir / "config.json").write_text(json.dumps(cfg))
    pred = get_predictor(f"hf:{metric_dir}")
    assert pred.kind.space == "depth" and pred.kind.metric
    assert (pred.predict(IMAGE, 70) >= 0).all()
    overridden = get_predictor(f"hf:{depth_anything_dir};kind=depth,metric=true")
    assert overridden.kind.space == "depth" and overridden.kind.metric


def test_square_only_dpt_runs_square_and_resizes_to_working_size(dpt_dir: Path) -> None:
    pred = get_predictor(f"hf:{dpt_dir}")
    assert pred.multiple == 16 and pred.square
    assert pred.input_size(90, 120, 140) == ((144, 144), (105, 140))
    out = pred.predict(IMAGE, 140)
    assert out.shape == working_size(90, 120, 140) == (105, 140)
    assert pred.predict(IMAGE, 70).shape == (52, 70)
    batch = pred.predict_batch([IMAGE, IMAGE[:, ::-1].copy()], 140)
    np.testing.assert_allclose(batch[0], out, rtol=1e-4, atol=1e-5)


def test_fp16_on_cpu_falls_back_to_fp32(depth_anything_dir: Path) -> None:
    with pytest.warns(UserWarning, match="needs CUDA"):
        pred = get_predictor(f"hf:{depth_anything_dir};dtype=fp16")
    assert pred.predict(IMAGE, 70).dtype == np.float32


@pytest.mark.parametrize(
    "options, message",
    [("dtype=fp64", "dtype"), ("colour=red", "unknown option"), ("kind=height", "disparity' or 'depth"), ("metric=maybe", "boolean")],
)
def test_bad_options(depth_anything_dir: Path, options: str, message: str) -> None:
    with pytest.raises(PredictorError, match=message):
        get_predictor(f"hf:{depth_anything_dir};{options}")


def test_errors_name_the_folder_and_reason(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(PredictorError, match="does not exist"):
        get_predictor(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(PredictorError, match="no config.json"):
        get_predictor(f"hf:{tmp_path}")
    not_depth = tmp_path / "dinov2"
    transformers.Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)).save_pretrained(not_depth)
    with pytest.raises(PredictorError, match="'dinov2' model, not a depth-estimation model"):
        get_predictor(f"hf:{not_depth}")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    with pytest.raises(PredictorError, match="could not be fetched from the Hugging Face Hub"):
        get_predictor("hf:some-org/some-depth-model")
