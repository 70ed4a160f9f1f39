"""Depth predictors, chosen by spec strings (``hf:...``, ``torchscript:...``, ``onnx:...``,
``python:module:callable``, ``simulated[:k=v,...]``, or any entry-point name)."""
from __future__ import annotations

from ..registry import PREDICTORS
from .base import (
    BasePredictor,
    OutputKind,
    Predictor,
    PredictorError,
    PredictorSpec,
    SampleContext,
    working_size,
)

PREDICTORS.register("hf", "sddr_pipeline.predictors.hf:from_spec")
PREDICTORS.register("torchscript", "sddr_pipeline.predictors.torchscript:from_spec")
PREDICTORS.register("onnx", "sddr_pipeline.predictors.onnx:from_spec")
PREDICTORS.register("python", "sddr_pipeline.predictors.python_callable:from_spec")
PREDICTORS.register("simulated", "sddr_pipeline.predictors.simulated:from_spec")


def get_predictor(spec: str, device: str = "cpu") -> Predictor:
    """Build a predictor from a spec string, e.g. ``get_predictor("simulated:cons=0.2")``.

    Every factory is called as ``factory(spec: PredictorSpec, device: str)``.
    """
    parsed = PredictorSpec.parse(spec)
    factory = PREDICTORS.get(parsed.name)
    return factory(parsed, device)


__all__ = [
    "BasePredictor",
    "OutputKind",
    "Predictor",
    "PredictorError",
    "PredictorSpec",
    "SampleContext",
    "get_predictor",
    "working_size",
]
