"""``onnx:<path>``: an ONNX depth model run with onnxruntime.

Same I/O convention and options as ``torchscript:<path>`` (``Bx3xHxW`` float32 in,
ImageNet-normalised; ``BxHxW`` or ``Bx1xHxW`` out). Export with dynamic batch, height and
width axes so that any working resolution can be run. Runs on the CPU provider, or on
CUDA first when ``device`` is a CUDA device and onnxruntime offers the CUDA provider.
onnxruntime is imported only when this predictor is built (``pip install
sddr-pipeline[onnx]``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..registry import PREDICTORS
from .base import PredictorError, PredictorSpec
from .common import existing_file, file_digest
from .torchscript import TensorModelPredictor


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise PredictorError(
            "the onnx predictor needs onnxruntime: pip install 'sddr-pipeline[onnx]' "
            "(or onnxruntime-gpu for CUDA)"
        ) from exc
    return onnxruntime


class OnnxPredictor(TensorModelPredictor):
    """An ONNX graph with one image input and the depth map as its first output."""

    def __init__(self, path: Path, device: str, options: dict[str, str]) -> None:
        who = f"onnx model {path}"
        super().__init__(f"onnx:{path.name}@{file_digest(path)}", options, who)
        ort = _import_onnxruntime()
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = device.partition(":")[2] or "0"
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(index)}))  # type: ignore[arg-type]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:
            raise PredictorError(f"{who} could not be loaded by onnxruntime: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise PredictorError(f"{who} has {len(inputs)} inputs ({names}); expected one Bx3xHxW image input")
        self.input_name = inputs[0].name

    def run(self, batch: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch.numpy()})[0]


@PREDICTORS.register("onnx")
def from_spec(spec: PredictorSpec, device: str) -> OnnxPredictor:
    return OnnxPredictor(existing_file(spec.arg, "onnx"), device, spec.options)
