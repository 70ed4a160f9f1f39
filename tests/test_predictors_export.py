"""torchscript:, onnx: and python: predictors against the eager module they were made from."""
from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sddr_pipeline.predictors import PredictorError, get_predictor, working_size
from sddr_pipeline.predictors.common import IMAGENET_MEAN, IMAGENET_STD, resize_image, to_tensor

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

IMAGE = np.random.default_rng(1).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)


class TinyDepth(torch.nn.Module):
    """Bx3xHxW -> Bx1xHxW, fully convolutional (any H, W)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1), torch.nn.Softplus()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def eager() -> TinyDepth:
    return TinyDepth().eval()


def reference(model: torch.nn.Module, image: np.ndarray, resolution: int, multiple: int = 1) -> np.ndarray:
    size = working_size(image.shape[0], image.shape[1], resolution, multiple)
    with torch.no_grad():
        return model(to_tensor([resize_image(image, size)], IMAGENET_MEAN, IMAGENET_STD))[0, 0].numpy()


@pytest.fixture(scope="module")
def torchscript_file(eager: TinyDepth, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "tiny.pt"
    torch.jit.script(eager).save(str(path))
    return path


@pytest.fixture(scope="module")
def onnx_file(eager: TinyDepth, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    squeezed = torch.nn.Sequential(eager, torch.nn.Flatten(0, 1)).eval()  # BxHxW output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            squeezed, (torch.rand(1, 3, 32, 48),), str(path), input_names=["image"], output_names=["depth"],
            dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "depth": {0: "b", 1: "h", 2: "w"}}, dynamo=False,
        )
    return path


def test_torchscript_matches_eager(torchscript_file: Path, eager: TinyDepth) -> None:
    pred = get_predictor(f"torchscript:{torchscript_file}")
    assert pred.name.startswith("torchscript:tiny.pt@") and pred.kind.space == "disparity"
    for r in (40, 100):
        out = pred.predict(IMAGE, r)
        assert out.shape == working_size(60, 80, r) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference(eager, IMAGE, r), rtol=1e-5, atol=1e-6)
    batch = pred.predict_batch([IMAGE, IMAGE[::-1].copy(), IMAGE[:30]], 40)
    assert [b.shape for b in batch] == [(30, 40), (30, 40), (15, 40)]
    np.testing.assert_allclose(batch[0], pred.predict(IMAGE, 40), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch[2], pred.predict(IMAGE[:30], 40), rtol=1e-5, atol=1e-6)


def test_torchscript_options(torchscript_file: Path, eager: TinyDepth) -> None:
    pred = get_predictor(f"torchscript:{torchscript_file};multiple=14,mean=0.5,std=0.5/0.5/0.5,kind=depth,metric=true")
    assert pred.kind.space == "depth" and pred.kind.metric
    out = pred.predict(IMAGE, 100)
    assert out.shape == working_size(60, 80, 100, 14) == (70, 98)
    size = (70, 98)
    with torch.no_grad():
        expected = eager(to_tensor([resize_image(IMAGE, size)], (0.5,) * 3, (0.5,) * 3))[0, 0].numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_onnx_matches_eager(onnx_file: Path, eager: TinyDepth) -> None:
    pred = get_predictor(f"onnx:{onnx_file}")
    assert pred.name.startswith("onnx:tiny.onnx@")
    for r in (40, 100):
        out = pred.predict(IMAGE, r)
        assert out.shape == working_size(60, 80, r) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference(eager, IMAGE, r), rtol=1e-4, atol=1e-5)
    batch = pred.predict_batch([IMAGE, IMAGE[::-1].copy()], 100)
    np.testing.assert_allclose(batch[1], reference(eager, IMAGE[::-1].copy(), 100), rtol=1e-4, atol=1e-5)


def test_output_of_other_size_is_resized(tmp_path: Path) -> None:
    class Half(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 2)

    path = tmp_path / "half.pt"
    torch.jit.script(Half()).save(str(path))
    assert get_predictor(f"torchscript:{path}").predict(IMAGE, 100).shape == (75, 100)


def test_python_callable_function_class_and_resolution_aware(
    tmp_path: Path, monkeypatch, torchscript_file: Path, eager: TinyDepth
) -> None:
    (tmp_path / "user_depth.py").write_text(
        textwrap.dedent(
            f"""
            import numpy as np
            import torch
            from sddr_pipeline.predictors.common import IMAGENET_MEAN, IMAGENET_STD, to_tensor

            __version__ = "1.2"
            MODEL = torch.jit.load({str(torchscript_file)!r})
            SEEN = []

            def depth(image):
                SEEN.append(image.shape)
                with torch.no_grad():
                    return MODEL(to_tensor([image], IMAGENET_MEAN, IMAGENET_STD))[0, 0]

            class Model:
                def __call__(self, image):
                    return np.ones(image.shape[:2]) * 2

            def own_size(image, resolution):
                SEEN.append((image.shape, resolution))
                return np.zeros((resolution // 2, resolution))

            def not_2d(image):
                return np.zeros((2, 3, 4))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pred = get_predictor("python:user_depth:depth")
    assert pred.name == "python:user_depth:depth@1.2"
    np.testing.assert_allclose(pred.predict(IMAGE, 100), reference(eager, IMAGE, 100), rtol=1e-5, atol=1e-6)
    import user_depth

    assert user_depth.SEEN[-1] == (75, 100, 3)
    assert np.all(get_predictor("python:user_depth:Model;kind=depth").predict(IMAGE, 40) == 2)
    assert get_predictor("python:user_depth:own_size").predict(IMAGE, 64).shape == (32, 64)
    assert user_depth.SEEN[-1] == ((60, 80, 3), 64)
    assert get_predictor(f"python:{tmp_path / 'user_depth.py'}:Model").predict(IMAGE, 40).shape == (30, 40)
    with pytest.raises(PredictorError, match="expected a 2-D depth map"):
        get_predictor("python:user_depth:not_2d").predict(IMAGE, 40)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("torchscript:/nonexistent/model.pt", "does not exist"),
        ("onnx:/nonexistent/model.onnx", "does not exist"),
        ("torchscript", "needs a file path"),
        ("python:no_such_module_xyz:fn", "cannot import module"),
        ("python:json:no_such_fn", "has no attribute"),
        ("python:json", "python:<module>:<callable>"),
    ],
)
def test_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(PredictorError, match=message):
        get_predictor(spec)


def test_bad_files_and_options(tmp_path: Path, torchscript_file: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(PredictorError, match="not a loadable TorchScript file"):
        get_predictor(f"torchscript:{junk}")
    pytest.importorskip("onnxruntime")
    with pytest.raises(PredictorError, match="could not be loaded by onnxruntime"):
        get_predictor(f"onnx:{junk}")
    with pytest.raises(PredictorError, match="unknown option"):
        get_predictor(f"torchscript:{torchscript_file};size=3")
    with pytest.raises(PredictorError, match="mean"):
        get_predictor(f"torchscript:{torchscript_file};mean=1/2")
    with pytest.raises(PredictorError, match="multiple"):
        get_predictor(f"torchscript:{torchscript_file};multiple=0")
    wrong = tmp_path / "wrong.pt"
    torch.jit.script(torch.nn.Flatten()).save(str(wrong))
    with pytest.raises(PredictorError, match="expected BxHxW or Bx1xHxW"):
        get_predictor(f"torchscript:{wrong}").predict(IMAGE, 40)
