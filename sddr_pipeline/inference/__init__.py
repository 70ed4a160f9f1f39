"""Inference: one-stage and coarse-to-fine two-stage SDDR refinement of single images."""
from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from ..predictors.base import Predictor, SampleContext
from .one_stage import DEFAULT_HIGH_RES, DEFAULT_LOW_RES, refine_one_stage, refine_predictions
from .range_clamp import RANGE_CLAMP, check_range_clamp
from .result import NonFiniteResultError, RefineResult, ScaleReference
from .two_stage import TwoStageConfig, coarse_to_fine, refine_two_stage

Mode = Literal["one-stage", "two-stage"]
MODES: tuple[str, ...] = ("one-stage", "two-stage")


def refine(
    image: np.ndarray,
    predictor: Predictor,
    refiner,
    *,
    mode: Mode = "one-stage",
    low_res: int | None = None,
    high_res: int | None = None,
    context: SampleContext | None = None,
    scale_reference: ScaleReference | None = None,
    two_stage: TwoStageConfig | None = None,
    edges: bool = True,
    range_clamp: float | None = None,
) -> RefineResult:
    """Refine one HxWx3 uint8 image with ``mode`` ``"one-stage"`` or ``"two-stage"``.

    ``edges=False`` skips the full-size edge map G (``result.edges`` is then None).
    ``range_clamp`` (fraction of the long side, 0 = the raw network output) overrides the
    local-range clamp: :data:`~.range_clamp.RANGE_CLAMP` for one-stage, the
    ``two_stage`` config's value for two-stage when None.
    """
    if range_clamp is not None:
        check_range_clamp(range_clamp)
    if mode == "one-stage":
        return refine_one_stage(
            image,
            predictor,
            refiner,
            low_res=low_res,
            high_res=high_res,
            context=context,
            scale_reference=scale_reference,
            edges=edges,
            range_clamp=RANGE_CLAMP if range_clamp is None else range_clamp,
        )
    if mode == "two-stage":
        if range_clamp is not None:
            two_stage = replace(two_stage or TwoStageConfig(), range_clamp=range_clamp)
        return refine_two_stage(
            image,
            predictor,
            refiner,
            low_res=low_res,
            high_res=high_res,
            context=context,
            scale_reference=scale_reference,
            config=two_stage,
            edges=edges,
        )
    raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")


__all__ = [
    "DEFAULT_HIGH_RES",
    "DEFAULT_LOW_RES",
    "MODES",
    "NonFiniteResultError",
    "RANGE_CLAMP",
    "RefineResult",
    "ScaleReference",
    "TwoStageConfig",
    "coarse_to_fine",
    "refine",
    "refine_one_stage",
    "refine_predictions",
    "refine_two_stage",
]
