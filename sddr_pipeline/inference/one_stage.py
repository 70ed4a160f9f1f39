"""One-stage SDDR: predictor at low and high resolution, normalise, refine, restore units."""
from __future__ import annotations

import time

import numpy as np

from ..predictors.base import Predictor, SampleContext
from .core import finish, predict_pair, refine_predictions
from .options import RefineOptions
from .result import RefineResult, ScaleReference


def refine_one_stage(
    image: np.ndarray,
    predictor: Predictor,
    refiner,
    options: RefineOptions,
    *,
    context: SampleContext | None = None,
    scale_reference: ScaleReference | None = None,
) -> RefineResult:
    """Refine one HxWx3 uint8 image: predict at low and high resolution, fuse with SDDR.

    ``options`` must be resolved (:meth:`RefineOptions.resolved`); use
    :func:`sddr_pipeline.inference.refine`, which resolves them. Returns the refined map
    at the image's size (see :class:`RefineResult` for units).
    """
    low, high, timings = predict_pair(image, predictor, options.low_res, options.high_res, context)
    t0 = time.perf_counter()
    maps = refine_predictions(low, high, predictor.kind, refiner, options.range_clamp)
    timings["refine"] = time.perf_counter() - t0
    return finish(maps, predictor.kind, image.shape[:2], low, high, options, timings, scale_reference)
