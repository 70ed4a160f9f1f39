"""One-stage SDDR: predictor at low and high resolution, normalise, refine, restore units."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..predictors.base import OutputKind, Predictor, PredictorError, SampleContext, check_image, check_prediction
from .alignment import align_least_squares, align_robust
from .edges import edge_map
from .normalize import from_disparity_like, minmax_normalize, prepare_prediction_batch, resize
from .range_clamp import RANGE_CLAMP, clamp_radius, clamp_to_local_range
from .result import RefineResult, ScaleReference, check_finite_result

DEFAULT_LOW_RES = 384
DEFAULT_HIGH_RES = 1024


def default_resolutions(predictor: Predictor, low_res: int | None, high_res: int | None) -> tuple[int, int]:
    """The user's resolutions, else the predictor's preferred ones, else 384 / 1024."""
    pref = getattr(predictor, "default_resolutions", None) or (DEFAULT_LOW_RES, DEFAULT_HIGH_RES)
    low = int(low_res or pref[0])
    high = int(high_res or pref[1])
    if low <= 0 or high <= 0:
        raise ValueError(f"resolutions must be positive, got low={low} high={high}")
    if low > high:
        raise ValueError(f"low resolution ({low}) must not exceed high resolution ({high})")
    return low, high


@dataclass
class RefinedMaps:
    """Refiner output at working size, in the refiner's normalised disparity-like space."""

    refined: torch.Tensor  # 1x1xHxW
    omega: torch.Tensor  # 1x1xHxW
    low_disp: torch.Tensor  # 1x1xhxw, predictor units (disparity-like), low working size
    high_disp: torch.Tensor  # 1x1xHxW, predictor units (disparity-like), refinement size


def refine_predictions(
    low: np.ndarray, high: np.ndarray, kind: OutputKind, refiner, range_clamp: float = RANGE_CLAMP
) -> RefinedMaps:
    """Run the refiner on two raw predictions of one image.

    Both are made disparity-like, resized to the HIGH prediction's size (the refinement
    working size), min-max normalised independently (as the network was trained) and
    refined. The result is then clamped to the local range of the LOW map (least-squares
    aligned to it) within ``range_clamp`` x the long side (:mod:`.range_clamp`; 0 keeps
    the raw network output). Pure computation: no predictor, no I/O.
    """
    device = refiner.device
    low_d, high_d = prepare_prediction_batch([low, high], kind, device)
    size = tuple(high_d.shape[-2:])
    low_n, _, _ = minmax_normalize(resize(low_d, size))
    high_n, _, _ = minmax_normalize(high_d)
    out = refiner(low_n, high_n)
    refined = out.depth.float()
    radius = clamp_radius(refined.shape, range_clamp)
    if radius:
        a, b = align_least_squares(low_n.float(), refined)
        refined = clamp_to_local_range(refined, a * low_n.float() + b, radius)
    return RefinedMaps(refined, out.omega.float(), low_d, high_d)


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
    overrides both: a robust fit of the refined disparity to 1/depth at those pixels, so
    the result is metric depth. Returns (map, space, metric, scale_source, (scale, shift)).
    """
    # plain bilinear, as the metrics resample every map: an antialiased shrink from the
    # working size blurs the edges refinement is for (LOW itself lost up to 35% REL on a
    # 347 px wide image refined at 1024)
    full = resize(refined, image_size, antialias=False)
    if scale_reference is not None:
        pts = np.asarray(scale_reference.points, dtype=np.float64)
        d = np.asarray(scale_reference.depth, dtype=np.float64)
        rows = np.clip(np.round(pts[:, 0]).astype(int), 0, image_size[0] - 1)
        cols = np.clip(np.round(pts[:, 1]).astype(int), 0, image_size[1] - 1)
        ok = np.isfinite(d) & (d > 0)
        if ok.sum() < 3:
            raise ValueError(f"scale reference has {int(ok.sum())} valid points; at least 3 are needed")
        src = full[0, 0][torch.from_numpy(rows[ok]), torch.from_numpy(cols[ok])]
        a, b = align_robust(src, torch.from_numpy(1.0 / d[ok]).to(src.device))
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


def _predict(predictor: Predictor, image: np.ndarray, res: int, ctx: SampleContext | None) -> np.ndarray:
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


def _predict_batch(
    predictor: Predictor, images: list[np.ndarray], res: int, contexts: list[SampleContext | None]
) -> list[np.ndarray]:
    """Checked predictions of windows, with the errors of :func:`_predict`."""
    who = f"predictor {_predictor_name(predictor)} on windows at {res}px"
    try:
        preds = predictor.predict_batch(images, res, contexts)
    except PredictorError:
        raise
    except (Exception, SystemExit) as exc:
        raise PredictorError(f"{who} failed: {type(exc).__name__}: {exc}") from exc
    if len(preds) != len(images):
        raise PredictorError(f"{who} returned {len(preds)} maps for {len(images)} windows")
    return [check_prediction(p, predictor.kind, f"{who} (window {i})", window=True) for i, p in enumerate(preds)]


def predict_pair(
    image: np.ndarray, predictor: Predictor, low_res: int, high_res: int, context: SampleContext | None
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The LOW and HIGH predictions of one image, with their timings in seconds."""
    check_image(image)
    t0 = time.perf_counter()
    low = _predict(predictor, image, low_res, context)
    t1 = time.perf_counter()
    high = _predict(predictor, image, high_res, context)
    t2 = time.perf_counter()
    return low, high, {"predict_low": t1 - t0, "predict_high": t2 - t1}


def finish(
    maps: RefinedMaps,
    kind: OutputKind,
    image_size: tuple[int, int],
    low: np.ndarray,
    high: np.ndarray,
    mode: str,
    steps: int,
    timings: dict[str, float],
    scale_reference: ScaleReference | None,
    edges: torch.Tensor | None = None,
    edge_history: list[np.ndarray] | None = None,
    want_edges: bool = True,
) -> RefineResult:
    """Package refiner maps as a :class:`RefineResult` at the image's size."""
    t0 = time.perf_counter()
    depth, space, metric, source, ab = restore_units(maps.refined, maps.low_disp, kind, image_size, scale_reference)
    if edges is None and want_edges:
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
        mode=mode,
        steps=steps,
        alignment=ab,
        timings=timings,
        edge_history=edge_history or [],
    )
    result.timings["finish"] = time.perf_counter() - t0
    return result


def refine_one_stage(
    image: np.ndarray,
    predictor: Predictor,
    refiner,
    *,
    low_res: int | None = None,
    high_res: int | None = None,
    context: SampleContext | None = None,
    scale_reference: ScaleReference | None = None,
    edges: bool = True,
    range_clamp: float = RANGE_CLAMP,
) -> RefineResult:
    """Refine one HxWx3 uint8 image: predict at low and high resolution, fuse with SDDR.

    Returns the refined map at the image's size (see :class:`RefineResult` for units);
    ``edges=False`` skips computing the edge map G (saves a bilateral filter pass);
    ``range_clamp`` is the local-range clamp radius (fraction of the long side, 0 = off).
    """
    low_res, high_res = default_resolutions(predictor, low_res, high_res)
    low, high, timings = predict_pair(image, predictor, low_res, high_res, context)
    t0 = time.perf_counter()
    maps = refine_predictions(low, high, predictor.kind, refiner, range_clamp)
    timings["refine"] = time.perf_counter() - t0
    return finish(maps, predictor.kind, image.shape[:2], low, high, "one-stage", 0, timings, scale_reference, want_edges=edges)
