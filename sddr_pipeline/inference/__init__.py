"""Inference: one-stage and coarse-to-fine two-stage SDDR refinement of single images.

``refine(image, predictor, refiner, options)`` is the entry (:mod:`.orchestrate`);
:class:`RefineOptions` says how (:mod:`.options`), :class:`RefineResult` what came out.
Names load on first use, so ``sddr_pipeline.inference.options`` imports without torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:
    from .core import RefinedMaps, finish, predict_pair, refine_predictions
    from .options import (
        DEFAULT_HIGH_RES, DEFAULT_LOW_RES, MODES, RANGE_CLAMP, Mode, RefineOptions, ResolutionPolicy, TwoStageConfig,
        check_range_clamp,
    )
    from .orchestrate import refine, refine_batch
    from .result import NonFiniteResultError, RefineResult, ScaleReference
    from .two_stage import coarse_to_fine

_LAZY = {
    "DEFAULT_HIGH_RES": "options", "DEFAULT_LOW_RES": "options", "MODES": "options", "Mode": "options",
    "RANGE_CLAMP": "options", "RefineOptions": "options", "ResolutionPolicy": "options",
    "TwoStageConfig": "options", "check_range_clamp": "options",
    "NonFiniteResultError": "result", "RefineResult": "result", "ScaleReference": "result",
    "RefinedMaps": "core", "finish": "core", "predict_pair": "core", "refine_predictions": "core",
    "coarse_to_fine": "two_stage",
    "refine": "orchestrate", "refine_batch": "orchestrate",
}

__getattr__, __dir__ = lazy_attributes(__name__, {name: f".{module}" for name, module in _LAZY.items()}, globals())

__all__ = sorted(_LAZY)
