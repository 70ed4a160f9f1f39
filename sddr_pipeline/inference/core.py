"""The steps one-stage and two-stage refinement share: predict, normalise, refine, finish.

* :func:`predict_pair` / :func:`predict_many` / :func:`predict_windows`: checked predictions
  (LOW and HIGH of an image; a batch of images or of windows);
* :func:`refine_predictions` / :func:`refine_predictions_batch`: the refiner on raw
  predictions, of one image or of a batch (pure computation);
* :func:`restore_units`: the normalised result back to the predictor's (or metric) units;
* :func:`finish`: everything above packaged as a :class:`~.result.RefineResult`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..predictors.base import OutputKind, Predictor, PredictorError, SampleContext, check_image, check_prediction
from .alignment import align_least_squares, align_robust, fit_sparse_depth, sample_nearest
from .edges import edge_map
from .normalize import from_disparity_like, minmax_normalize, prepare_prediction_batch, resize
from .options import RefineOptions
from .range_clamp import clamp_radius, clamp_to_local_range
from .result import RefineResult, ScaleReference, check_finite_result


@dataclass
class RefinedMaps:
    """Refiner output at working size, in the refiner's normalised disparity-like space."""

    refined: torch.Tensor  # 1x1xHxW
    omega: torch.Tensor  # 1x1xHxW
    low_disp: torch.Tensor  # 1x1xhxw, predictor units (disparity-like), low working size
    high_disp: torch.Tensor  # 1x1xHxW, predictor units (disparity-like), refinement size


def refine_predictions(low: np.ndarray, high: np.ndarray, kind: OutputKind, refiner, range_clamp: float) -> RefinedMaps:
    """Run the refiner on two raw predictions of one image.

    Both are made disparity-like, resized to the HIGH prediction's size (the refinement
    working size), min-max normalised independently (as the network was trained) and
    refined. The result is then clamped to the local range of the LOW map (least-squares
    aligned to it) within ``range_clamp`` x the long side (:mod:`.range_clamp`; 0 keeps
    the raw network output). Pure computation: no predictor, no I/O.
    """
    return refine_predictions_batch([(low, high)], kind, refiner, range_clamp)[0]


def refine_predictions_batch(
    pairs: list[tuple[np.ndarray, np.ndarray]], kind: OutputKind, refiner, range_clamp: float
) -> list[RefinedMaps]:
    """:func:`refine_predictions` of several images in ONE refiner call; their HIGH
    predictions must share a size (same-size images at the same resolutions do)."""
    prepared = [prepare_prediction_batch([low, high], kind, refiner.device) for low, high in pairs]
    size = tuple(prepared[0][1].shape[-2:])
    if any(tuple(high_d.shape[-2:]) != size for _, high_d in prepared):
        raise ValueError(f"HIGH predictions of one refiner batch must share a size, the first is {size}")
    low_n = torch.cat([minmax_normalize(resize(low_d, size))[0] for low_d, _ in prepared])
    high_n = torch.cat([minmax_normalize(high_d)[0] for _, high_d in prepared])
    out = refiner(low_n, high_n)
    maps = []
    for k, (low_d, high_d) in enumerate(prepared):
        refined, low_k = out.depth[k:k + 1].float(), low_n[k:k + 1].float()
        radius = clamp_radius(refined.shape, range_clamp)
        if radius:
            a, b = align_least_squares(low_k, refined)
            refined = clamp_to_local_range(refined, a * low_k + b, radius)
        maps.append(RefinedMaps(refined, out.omega[k:k + 1].float(), low_d, high_d))
    return maps


def restore_units(
    refined: torch.Tensor,
    low_disp: torch.Tensor,
    kind: OutputKind,
    image_size: tuple[int, int],
    scale_reference: ScaleReference | None = None,
) -> tuple[torch.Tensor, str, bool, str, tuple[float, float]]:
    """Bring the normalised refined map back to units a user can use, at image size.

    Relative predictors: least-squares scale/shift to the consistent LOW prediction (at
    its own resolution), keeping the predictor's polarity. Metric predictors: the same
    fit made robust, so the result is metric. A ``scale_reference`` (sparse metric depths)
    overrides both: a robust fit of the refined disparity to 1/depth at those pixels
    (:func:`~.alignment.fit_sparse_depth`), so the result is metric depth. Returns
    (map, space, metric, scale_source, (scale, shift)).
    """
    # plain bilinear, as the metrics resample every map: an antialiased shrink from the
    # working size blurs the edges refinement is for (LOW itself lost up to 35% REL on a
    # 347 px wide image refined at 1024)
    full = resize(refined, image_size, antialias=False)
    if scale_reference is not None:
        a, b = fit_sparse_depth(sample_nearest(full[0, 0], scale_reference.points), scale_reference.depth)
        disp = a * full + b
        return from_disparity_like(disp, OutputKind("depth", True)), "depth", True, "reference", (a, b)
    small = resize(refined, tuple(low_disp.shape[-2:]))
    fit = align_robust if kind.metric else align_least_squares
    a, b = fit(small, low_disp)
    disp = a * full + b
    source = "metric-predictor" if kind.metric else "predictor"
    return from_disparity_like(disp, kind), kind.space, kind.metric, source, (a, b)


def _predictor_name(predictor: Predictor) -> str:
    return repr(getattr(predictor, "name", predictor))


def predict(predictor: Predictor, image: np.ndarray, res: int, ctx: SampleContext | None) -> np.ndarray:
    """One checked prediction (:func:`check_prediction`); any failure of the model, a
    ``SystemExit`` included, is a :class:`PredictorError` naming the predictor."""
    who = f"predictor {_predictor_name(predictor)} at {res}px"
    try:
        pred = predictor.predict(image, res, ctx)
    except PredictorError:
        raise
    except (Exception, SystemExit) as exc:  # a third-party model failing is this image's error, not the run's end
        raise PredictorError(f"{who} failed: {type(exc).__name__}: {exc}") from exc
    return check_prediction(pred, predictor.kind, who)


def predict_many(
    predictor: Predictor, images: list[np.ndarray], res: int, contexts: list[SampleContext | None], window: bool = False
) -> list[np.ndarray]:
    """Checked predictions of several images (or windows of one, ``window``) in one
    ``predict_batch`` call, with the errors of :func:`predict`."""
    what = "windows" if window else "images"
    who = f"predictor {_predictor_name(predictor)} on {what} at {res}px"
    try:
        preds = predictor.predict_batch(images, res, contexts)
    except PredictorError:
        raise
    except (Exception, SystemExit) as exc:
        raise PredictorError(f"{who} failed: {type(exc).__name__}: {exc}") from exc
    if len(preds) != len(images):
        raise PredictorError(f"{who} returned {len(preds)} maps for {len(images)} {what}")
    return [check_prediction(p, predictor.kind, f"{who} ({what[:-1]} {i})", window=window) for i, p in enumerate(preds)]


def predict_windows(
    predictor: Predictor, images: list[np.ndarray], res: int, contexts: list[SampleContext | None]
) -> list[np.ndarray]:
    """Checked predictions of windows, with the errors of :func:`predict`."""
    return predict_many(predictor, images, res, contexts, window=True)


def predict_pair(
    image: np.ndarray, predictor: Predictor, low_res: int, high_res: int, context: SampleContext | None
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The LOW and HIGH predictions of one image, with their timings in seconds."""
    check_image(image)
    t0 = time.perf_counter()
    low = predict(predictor, image, low_res, context)
    t1 = time.perf_counter()
    high = predict(predictor, image, high_res, context)
    t2 = time.perf_counter()
    return low, high, {"predict_low": t1 - t0, "predict_high": t2 - t1}


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x[0, 0].float().cpu().numpy()


def finish(
    maps: RefinedMaps,
    kind: OutputKind,
    image_size: tuple[int, int],
    low: np.ndarray,
    high: np.ndarray,
    options: RefineOptions,
    timings: dict[str, float],
    scale_reference: ScaleReference | None,
    edges: torch.Tensor | None = None,
    edge_history: list[np.ndarray] | None = None,
) -> RefineResult:
    """Package refiner maps as a :class:`RefineResult` at the image's size; ``options``
    are the resolved options of the run (mode, steps, whether to compute edges and
    confidence)."""
    t0 = time.perf_counter()
    depth, space, metric, source, ab = restore_units(maps.refined, maps.low_disp, kind, image_size, scale_reference)
    if edges is None and options.edges:
        edges = edge_map(maps.refined)
    depth_map = depth[0, 0].float().cpu().numpy()
    normalized = resize(maps.refined, image_size, antialias=False)[0, 0].cpu().numpy()
    check_finite_result(depth=depth_map, normalized=normalized)
    result = RefineResult(
        depth=depth_map,
        space=space,
        metric=metric,
        scale_source=source,
        normalized=normalized,
        omega=resize(maps.omega, image_size)[0, 0].clamp(0, 1).cpu().numpy(),
        edges=None if edges is None else resize(edges, image_size)[0, 0].cpu().numpy(),
        low=np.asarray(low, dtype=np.float32),
        high=np.asarray(high, dtype=np.float32),
        mode=options.mode,
        steps=options.steps,
        alignment=ab,
        timings=timings,
        edge_history=edge_history or [],
        kind=kind,
        low_disp=_numpy(maps.low_disp),
        high_disp=_numpy(maps.high_disp),
        options=options,
    )
    result.timings["finish"] = time.perf_counter() - t0
    if options.confidence:
        from ..confidence import confidence

        t1 = time.perf_counter()
        result.confidence = confidence(result)
        result.timings["confidence"] = time.perf_counter() - t1
    return result
