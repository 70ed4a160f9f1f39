"""Inference: one-stage and coarse-to-fine two-stage SDDR refinement of single images.

``refine(image, predictor, refiner, options)`` is the entry (:mod:`.orchestrate`);
:class:`RefineOptions` says how (:mod:`.options`), :class:`RefineResult` what came out.
Names load on first use, so ``sddr_pipeline.inference.options`` imports without torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import RefinedMaps, finish, predict_pair, refine_predictions
    from .options import (
        DEFAULT_HIGH_RES, DEFAULT_LOW_RES, MODES, RANGE_CLAMP, Mode, RefineOptions, ResolutionPolicy, TwoStageConfig,
        check_range_clamp,
    )
    from .orchestrate import refine
    from .result import NonFiniteResultError, RefineResult, ScaleReference
    from .two_stage import coarse_to_fine

_LAZY = {
    "DEFAULT_HIGH_RES": "options", "DEFAULT_LOW_RES": "options", "MODES": "options", "Mode": "options",
    "RANGE_CLAMP": "options", "RefineOptions": "options", "ResolutionPolicy": "options",
    "TwoStageConfig": "options", "check_range_clamp": "options",
    "NonFiniteResultError": "result", "RefineResult": "result", "ScaleReference": "result",
    "RefinedMaps": "core", "finish": "core", "predict_pair": "core", "refine_predictions": "core",
    "coarse_to_fine": "two_stage",
    "refine": "orchestrate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
