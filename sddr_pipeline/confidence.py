"""Per-pixel confidence of a refined depth map, and its validation by sparsification.

Omega says where the refiner took detail from the HIGH prediction, not whether the result
is right, so confidence is built from evidence about ERROR instead. With ``n`` the refined
disparity-like map (``result.normalized``) and ``L``, ``H`` the LOW and HIGH predictions
made disparity-like, brought to the image's size and robustly scale/shift-aligned to
``n``, three disparity-space uncertainties are combined:

* ``d_low = |n - L|``: disagreement with the globally consistent LOW prediction (where
  the refiner departed from it, it either recovered detail or copied an artefact);
* ``d_high = |n - H|``: disagreement with the HIGH prediction (its local
  inconsistencies and texture leaks, and the places where the refiner overruled it);
  HIGH is known to be locally wrong even where the refined map is right, so it counts
  a quarter;
* ``edge = range_r(n)``: the local max-min range of ``n`` in a window of radius ``r`` =
  1.5 LOW pixels, i.e. the error an edge misplaced by that much would make (the LOW
  prediction only knows edges to about that precision).

``sigma = sqrt(d_low^2 + (d_high / 4)^2 + edge^2)`` is a disparity error scale; mapped
through the result's own alignment (``disp = a * n + b``) it gives the expected RELATIVE
error ``e = a * sigma / disp`` (a disparity error ``delta`` is a relative depth error
``delta / disp`` to first order, so far pixels are less certain), and

    confidence = exp(-e / e0),   e0 = 0.05 by default,

i.e. 1 where the evidence predicts no error, 1/e where it predicts ~5 % relative error.
It is a pure function of the :class:`~sddr_pipeline.inference.RefineResult` and can be
used directly as a per-pixel depth-loss weight.

Validation: :func:`sparsification` and :func:`ause` (area between the sparsification curve
and the oracle's), :func:`evaluate_confidence` on a dataset with ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from scipy.ndimage import maximum_filter, minimum_filter

from .inference.alignment import align_robust
from .inference.normalize import as_map_tensor, resize, sanitize, to_disparity_like
from .inference.options import RefineOptions
from .inference.result import RefineResult

DEFAULT_E0 = 0.05
HIGH_WEIGHT = 0.25
"""Weight of ``d_high``; chosen, with the edge window, on synthetic TRAINING scenes
(``make_scene`` seeds 100-103), never on the validation sets."""
_FIT_SAMPLES = 20_000


def _full(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize(as_map_tensor(arr.astype(np.float32)), size)[0, 0].numpy().astype(np.float64)


def _sample_index(n: int, seed: int = 0) -> np.ndarray:
    if n <= _FIT_SAMPLES:
        return np.arange(n)
    return np.random.default_rng(seed).choice(n, _FIT_SAMPLES, replace=False)


def aligned_residual(src: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float]:
    """``|ref - (a * src + b)|`` after a robust scale/shift fit (on a fixed subsample of
    pixels), and the fit's MAD-based residual spread."""
    idx = _sample_index(src.size)
    s, r = src.reshape(-1)[idx], ref.reshape(-1)[idx]
    a, b = align_robust(torch.from_numpy(s), torch.from_numpy(r))
    res = np.abs(ref - (a * src + b))
    return res, float(np.median(res.reshape(-1)[idx]) * 1.4826)


def disparity_inputs(result: RefineResult) -> tuple[np.ndarray, np.ndarray]:
    """LOW and HIGH made disparity-like exactly as the refiner saw them (float64, at their
    working sizes): the result's own ``low_disp``/``high_disp``, or derived from
    ``low``/``high`` with the predictor's ``kind`` it records."""
    if result.low_disp is not None and result.high_disp is not None:
        return result.low_disp.astype(np.float64), result.high_disp.astype(np.float64)
    if result.kind is None:
        raise ValueError("confidence needs the predictor's output kind: pass a RefineResult made by refine()")
    return tuple(to_disparity_like(sanitize(p), result.kind).astype(np.float64) for p in (result.low, result.high))


def edge_radius(result: RefineResult) -> int:
    """Half-width of the edge-uncertainty window: 1.5 LOW pixels at the image's size."""
    h, w = result.normalized.shape
    lh, lw = result.low.shape
    return max(1, int(round(1.5 * max(h / lh, w / lw))))


def uncertainty_terms(result: RefineResult) -> dict[str, np.ndarray]:
    """The disparity-space terms ``d_low``, ``d_high``, ``edge`` (HxW float64, in the units
    of ``result.normalized``); see the module docstring."""
    n = result.normalized.astype(np.float64)
    size = n.shape
    low, high = disparity_inputs(result)
    d_low, _ = aligned_residual(_full(low, size), n)
    d_high, _ = aligned_residual(_full(high, size), n)
    r = edge_radius(result)
    window = 2 * r + 1
    edge = maximum_filter(n, size=window, mode="nearest") - minimum_filter(n, size=window, mode="nearest")
    return {"d_low": d_low, "d_high": d_high, "edge": edge}


def confidence(result: RefineResult, e0: float = DEFAULT_E0) -> np.ndarray:
    """Per-pixel confidence in [0, 1] (HxW float32) of ``result.depth``: ``exp(-e / e0)``
    with ``e`` the expected relative error (module docstring)."""
    if not e0 > 0:
        raise ValueError(f"e0 must be positive, got {e0}")
    terms = uncertainty_terms(result)
    sigma = np.sqrt(terms["d_low"] ** 2 + (HIGH_WEIGHT * terms["d_high"]) ** 2 + terms["edge"] ** 2)
    a, b = result.alignment
    disp = a * result.normalized.astype(np.float64) + b
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(disp > 0, abs(a) * sigma / disp, np.inf)
    conf = np.exp(-rel / e0)
    conf[~np.isfinite(result.depth) | (result.depth <= 0)] = 0.0
    return np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------ validation


def sparsification(error: np.ndarray, order_key: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Mean ``error`` of the pixels left after removing, for each fraction, that share of
    pixels with the LOWEST ``order_key`` (confidence; use ``-error`` for the oracle)."""
    e = np.asarray(error, dtype=np.float64).reshape(-1)
    order = np.argsort(np.asarray(order_key, dtype=np.float64).reshape(-1), kind="stable")
    kept_desc = e[order][::-1]  # most confident first
    csum = np.cumsum(kept_desc)
    n = e.size
    out = np.empty(len(fractions))
    for i, f in enumerate(fractions):
        keep = max(1, int(round(n * (1.0 - f))))
        out[i] = csum[keep - 1] / keep
    return out


def ause(curve: np.ndarray, oracle: np.ndarray, fractions: np.ndarray) -> float:
    """Area Under the Sparsification Error: trapezoid integral of ``curve - oracle`` over
    the removed fraction (in the error's units)."""
    diff = np.asarray(curve, dtype=np.float64) - np.asarray(oracle, dtype=np.float64)
    return float(np.sum(0.5 * (diff[1:] + diff[:-1]) * np.diff(fractions)))


@dataclass
class SparsificationReport:
    """Sparsification of one error map (or of pooled pixels) by several orderings."""

    fractions: np.ndarray
    curves: dict[str, np.ndarray]
    ause: dict[str, float]
    mean_error: float
    pixels: int
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "pixels": self.pixels,
            "mean_abs_rel": self.mean_error,
            "ause": self.ause,
            "ause_ratio_to_random": {k: v / self.ause["random"] for k, v in self.ause.items() if self.ause["random"] > 0},
            "per_image": self.per_image,
        }


def sparsification_report(
    error: np.ndarray, scores: dict[str, np.ndarray], fractions: np.ndarray | None = None, seed: int = 0
) -> SparsificationReport:
    """Curves and AUSE for each confidence in ``scores``, plus ``oracle`` and ``random``
    (one seeded random order)."""
    fr = np.linspace(0.0, 0.98, 50) if fractions is None else np.asarray(fractions, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64).reshape(-1)
    oracle = sparsification(e, -e, fr)
    curves = {"oracle": oracle, "random": sparsification(e, np.random.default_rng(seed).random(e.size), fr)}
    for name, s in scores.items():
        curves[name] = sparsification(e, np.asarray(s).reshape(-1), fr)
    return SparsificationReport(fr, curves, {k: ause(c, oracle, fr) for k, c in curves.items()}, float(e.mean()), e.size)


def evaluate_confidence(
    samples: Iterable[Any],
    predictor: Any,
    refiner: Any,
    options: RefineOptions | None = None,
    *,
    n_reference: int = 200,
    e0: float = DEFAULT_E0,
    seed: int = 0,
    **changes: Any,
) -> SparsificationReport:
    """Refine each sample (metric via ``n_reference`` sparse ground-truth depths), compute
    :func:`confidence` and the absolute relative depth error on valid ground truth, and
    pool all pixels into one sparsification report (AUSE per image in ``per_image``).

    Also ranks by two single cues for comparison: ``omega`` (detail taken from HIGH) and
    ``edge_distance`` (negated local range of the refined map). ``options`` and keyword
    ``changes`` say how to refine, as for :func:`sddr_pipeline.inference.refine`."""
    from .geometry.tsdf import sparse_reference
    from .inference import refine

    options = RefineOptions.build(options, **{**changes, "edges": False})

    errors, scores = [], {"confidence": [], "omega": [], "edge_distance": []}
    per_image: dict[str, dict[str, float]] = {}
    for i, sample in enumerate(samples):
        gt = sample.gt
        if gt is None or sample.gt_kind != "depth":
            raise ValueError(f"sample {sample.name} needs metric depth ground truth")
        ref = sparse_reference(gt, n_reference, seed + i)
        result = refine(sample.image(), predictor, refiner, options, context=sample.context(), scale_reference=ref)
        valid = (gt > 0) & np.isfinite(result.depth) & (result.depth > 0)
        err = np.abs(result.depth[valid] - gt[valid]) / gt[valid]
        conf = confidence(result, e0=e0)
        edge = uncertainty_terms(result)["edge"]
        image_scores = {"confidence": conf[valid], "omega": -result.omega[valid], "edge_distance": -edge[valid]}
        one = sparsification_report(err, image_scores, seed=seed)
        per_image[sample.name] = {"mean_abs_rel": one.mean_error, **{f"ause_{k}": v for k, v in one.ause.items()}}
        errors.append(err)
        for k, v in image_scores.items():
            scores[k].append(v)
    if not errors:
        raise ValueError("no samples to evaluate")
    report = sparsification_report(np.concatenate(errors), {k: np.concatenate(v) for k, v in scores.items()}, seed=seed)
    report.per_image = per_image
    return report


def save_confidence(path: Any, conf: np.ndarray) -> None:
    """Write a confidence map next to depth as float32 ``.npy`` (atomically)."""
    from .io import save_npy

    c = np.asarray(conf, dtype=np.float32)
    if c.ndim != 2 or not (np.all(c >= 0) and np.all(c <= 1)):
        raise ValueError("confidence must be a 2-D map in [0, 1]")
    save_npy(path, c)


__all__ = [
    "DEFAULT_E0",
    "SparsificationReport",
    "ause",
    "confidence",
    "evaluate_confidence",
    "disparity_inputs",
    "save_confidence",
    "sparsification",
    "sparsification_report",
    "uncertainty_terms",
]
