"""The one entry to refinement: every caller (Python API, ``sddr refine``, the Ray stages,
the evaluation runner, the pseudo-label generator) goes through :func:`refine`."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..predictors.base import Predictor, SampleContext
from .one_stage import refine_one_stage
from .options import RefineOptions
from .result import RefineResult, ScaleReference
from .two_stage import refine_two_stage


def refine(
    image: np.ndarray,
    predictor: Predictor,
    refiner: Any,
    options: RefineOptions | None = None,
    *,
    context: SampleContext | None = None,
    scale_reference: ScaleReference | None = None,
    **changes: Any,
) -> RefineResult:
    """Refine one HxWx3 uint8 image.

    ``options`` (default :class:`RefineOptions`) say how; keyword ``changes`` override its
    fields for this call (``refine(img, p, r, mode="two-stage", steps=3)``). Defaults that
    depend on the predictor or the refiner are filled by :meth:`RefineOptions.resolved`.
    ``context`` carries what a predictor may use besides the image (GT for the simulated
    predictor); ``scale_reference`` (sparse metric depths) makes the result metric.
    """
    opts = RefineOptions.build(options, **changes).resolved(predictor, refiner)
    run = refine_two_stage if opts.mode == "two-stage" else refine_one_stage
    return run(image, predictor, refiner, opts, context=context, scale_reference=scale_reference)
