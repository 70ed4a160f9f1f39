"""Depth predictors, chosen by spec strings (``hf:...``, ``torchscript:...``, ``onnx:...``,
``python:module:callable``, ``simulated[:k=v,...]``, or any entry-point name).

Each built-in registers its factory where it is defined (``@PREDICTORS.register(name)``);
:data:`sddr_pipeline.registry.PREDICTORS` imports them on first lookup.
"""
from __future__ import annotations

from ..registry import PREDICTORS
from .base import (
    BasePredictor,
    OutputKind,
    Predictor,
    PredictorError,
    PredictorFactory,
    PredictorSpec,
    SampleContext,
    working_size,
)


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
    "PredictorFactory",
    "PredictorSpec",
    "SampleContext",
    "get_predictor",
    "working_size",
]
