"""The one entry to refinement: every caller (Python API, ``sddr refine``, the Ray stages,
the evaluation runner, the pseudo-label generator) goes through :func:`refine`."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ..predictors.base import Predictor, SampleContext, check_image
from ..predictors.common import group_indices
from .core import finish, predict_many, refine_predictions_batch
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


def refine_batch(
    images: Sequence[np.ndarray],
    predictor: Predictor,
    refiner: Any,
    options: RefineOptions | None = None,
    contexts: Sequence[SampleContext | None] | None = None,
    scale_references: Sequence[ScaleReference | None] | None = None,
) -> list[RefineResult | Exception]:
    """:func:`refine` of several images, each result or the exception that image failed
    with, in input order; ``scale_references`` (one per image, or None) make results
    metric as :func:`refine`'s ``scale_reference`` does.

    One-stage: each group of same-size images goes through the predictor
    (``predict_batch``) at each resolution and through the refiner as ONE tensor batch,
    so a Ray stage's ``batch_size`` batches model calls. A group that fails is redone
    image by image, so every image gets its own result or error. Two-stage refines image
    by image.
    """
    opts = RefineOptions.build(options).resolved(predictor, refiner)
    ctxs = list(contexts) if contexts is not None else [None] * len(images)
    refs = list(scale_references) if scale_references is not None else [None] * len(images)
    keys = [tuple(np.shape(image)) if opts.mode == "one-stage" else i for i, image in enumerate(images)]
    results: list[RefineResult | Exception | None] = [None] * len(images)
    for indices in group_indices(keys):
        batch: list[RefineResult] | list[RefineResult | Exception] | None = None
        if len(indices) > 1:
            try:
                batch = _refine_same_size([images[i] for i in indices], predictor, refiner, opts,
                                          [ctxs[i] for i in indices], [refs[i] for i in indices])
            except Exception:  # redone one by one below: each image gets its own result or error
                batch = None
        if batch is None:
            batch = [_refine_or_error(images[i], predictor, refiner, opts, ctxs[i], refs[i]) for i in indices]
        for i, result in zip(indices, batch):
            results[i] = result
    return results  # type: ignore[return-value]


def _refine_or_error(image: np.ndarray, predictor: Predictor, refiner: Any, options: RefineOptions,
                     context: SampleContext | None, reference: ScaleReference | None = None) -> RefineResult | Exception:
    try:
        return refine(image, predictor, refiner, options, context=context, scale_reference=reference)
    except Exception as exc:  # this image's error, returned in its place
        return exc


def _refine_same_size(images: list[np.ndarray], predictor: Predictor, refiner: Any, options: RefineOptions,
                      contexts: list[SampleContext | None],
                      references: list[ScaleReference | None]) -> list[RefineResult]:
    """One-stage refinement of same-size images with one predictor call per resolution
    and one refiner call; timings are the batch's, shared equally."""
    for image in images:
        check_image(image)
    t0 = time.perf_counter()
    lows = predict_many(predictor, images, options.low_res, contexts)
    t1 = time.perf_counter()
    highs = predict_many(predictor, images, options.high_res, contexts)
    t2 = time.perf_counter()
    maps = refine_predictions_batch(list(zip(lows, highs)), predictor.kind, refiner, options.range_clamp)
    t3 = time.perf_counter()
    n = len(images)
    timings = {"predict_low": (t1 - t0) / n, "predict_high": (t2 - t1) / n, "refine": (t3 - t2) / n}
    return [finish(m, predictor.kind, image.shape[:2], low, high, options, dict(timings), ref)
            for m, image, low, high, ref in zip(maps, images, lows, highs, references)]
