"""Depth metrics exactly as ``docs/METRICS.md`` defines them, as pure numpy functions.

Pipeline for one prediction (:func:`evaluate_prediction`):

1. The prediction is resized to the ground truth's size (bilinear) and non-finite pixels
   are set to the median of the finite ones (the rule of
   :func:`~sddr_pipeline.inference.normalize.sanitize`, kept in float64 here so exact
   inputs score exactly). Valid GT = finite and > 0.
2. Alignment (:func:`align_prediction`): least-squares scale and shift on valid pixels in
   the predictor's space (disparity for relative inverse-depth predictors, depth for
   relative depth predictors and for metric ones), or scale only, or none ("metric").
   The aligned map is clipped below, then turned into depth. In disparity the floor is
   the smallest valid GT disparity: depth never exceeds the farthest GT depth (the
   dataset-agnostic form of the usual ``depth_cap``), so a few near-zero disparities
   cannot blow REL up. In depth the floor is 1e-3 of the nearest GT depth: it only keeps
   depth positive (REL of a too-near pixel is bounded by 1 anyway).
3. Value metrics (delta_k, REL, RMSE) on the aligned depth at valid pixels.
4. Ordinal metrics (ORD, D3R) on disparity-like maps, no fit: GT disparity divided by its
   maximum, so it lies in [m, 1] with m = min/max, and the raw estimate (made disparity-
   like) min-max rescaled to [m, 1]. This is the reading of METRICS.md under which the
   estimate's range ``[min GT disparity, 1]`` is non-trivial; it makes an affine-exact
   estimate identical to the GT. Superpixels: SLIC on the GT disparity.
5. Edge metrics (DBE_acc, DBE_comp) from Canny edges of the aligned depth and of the GT,
   and Depth-Pro-style boundary F1 on inverse depth.

Invalid GT pixels: SLIC runs on the GT with invalid pixels filled from the nearest valid
one; superpixels with fewer than half valid pixels are dropped and a centre is the mean
coordinate of a superpixel's VALID pixels snapped to its nearest valid pixel. Canny runs
with the GT validity as mask for BOTH maps (skimage smooths ignoring masked pixels and
erodes the mask), so neither map has edges where the GT cannot confirm or refute them;
boundary F1 counts only neighbour pairs whose two pixels are valid.

Sparse GT: ordinal and edge metrics compare structures between neighbouring regions and
are undefined on LiDAR-sparse GT (KITTI: ~19 % valid). They are returned as None, with a
reason, when the valid fraction is below :data:`DENSE_MIN_FRACTION` (0.5; NYU's raw
depth, 67-75 % valid, passes).

Undefined values are None, never NaN: no valid pixel (every metric), no superpixel pair
with a GT discontinuity (D3R), no pair with a GT order (ORD), no GT edge (DBE), no GT
boundary at the lowest threshold (boundary F1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from skimage.feature import canny
from skimage.segmentation import slic

from ..inference.alignment import align_least_squares
from ..inference.normalize import invert_with_floor

Space = Literal["disparity", "depth"]
AlignmentMode = Literal["auto", "disparity", "depth", "scale", "metric"]

VALUE_KEYS: tuple[str, ...] = ("delta1", "delta2", "delta3", "rel", "rmse")
STRUCTURE_KEYS: tuple[str, ...] = ("ord", "d3r", "dbe_acc", "dbe_comp", "bf1")
METRIC_KEYS: tuple[str, ...] = VALUE_KEYS + STRUCTURE_KEYS
ALIGNMENT_MODES: tuple[str, ...] = ("auto", "disparity", "depth", "scale", "metric")
#: True where a larger value is better (for tables and reports).
HIGHER_IS_BETTER: dict[str, bool] = {k: k in ("delta1", "delta2", "delta3", "bf1") for k in METRIC_KEYS}

DENSE_MIN_FRACTION = 0.5
SLIC_SEGMENTS = 5000
SLIC_COMPACTNESS = 20.0
#: SLIC sees the GT disparity scaled to [0, SLIC_RANGE] so that compactness 20 weighs
#: space against value as it does for Lab images (L in [0, 100]), the range SLIC's
#: compactness scale was designed for; on [0, 1] data 20 would give a plain grid.
SLIC_RANGE = 100.0
SLIC_MAX_SIDE = 1024
SUPERPIXEL_MIN_VALID = 0.5
ORD_PARTNERS = 3
D3R_GT_RATIO, D3R_RATIO = 1.1, 1.01
ORD_GT_RATIO, ORD_RATIO = 1.0, 1.03
ORD_EPS = float(np.finfo(np.float64).eps)
CANNY_SIGMA, CANNY_LOW, CANNY_HIGH = math.sqrt(2.0), 0.1, 0.2
DBE_MAX = 10.0
DEPTH_FLOOR = 1e-3
BF1_THRESHOLDS: np.ndarray = np.linspace(1.05, 1.25, 10)


def valid_mask(gt: np.ndarray) -> np.ndarray:
    """GT > 0 and finite."""
    arr = np.asarray(gt, dtype=np.float64)
    return np.isfinite(arr) & (arr > 0)


def resize_bilinear(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float64 ``pred`` resized to ``shape`` = (h, w) by plain bilinear interpolation
    (half-pixel centres); a no-op at the same size."""
    arr = np.asarray(pred, dtype=np.float64)
    if arr.shape == tuple(shape):
        return arr.copy()
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def ordinal(a: np.ndarray, b: np.ndarray, t: float, eps: float = ORD_EPS) -> np.ndarray:
    """ord(a, b, t): +1 where (a+eps)/(b+eps) > t, -1 where < 1/t, else 0 (int8)."""
    r = (np.asarray(a, np.float64) + eps) / (np.asarray(b, np.float64) + eps)
    return np.where(r > t, 1, np.where(r < 1.0 / t, -1, 0)).astype(np.int8)


@dataclass(frozen=True)
class Superpixels:
    """SLIC superpixels of a GT map: kept centres and the pairs the ordinal metrics use.

    ``centres`` is (N, 2) int (row, col) at GT resolution; ``adjacent`` (M, 2) indices
    into ``centres`` of 4-neighbour-adjacent superpixels, each unordered pair once;
    ``random`` (K, 2) each superpixel paired with :data:`ORD_PARTNERS` distinct others.
    """

    labels: np.ndarray
    centres: np.ndarray
    adjacent: np.ndarray
    random: np.ndarray


@dataclass(frozen=True)
class GroundTruth:
    """Everything about one GT map that does not depend on the prediction; build it once
    per image with :func:`prepare_ground_truth` and score every method against it."""

    kind: str
    depth: np.ndarray
    disparity: np.ndarray
    valid: np.ndarray
    valid_fraction: float
    superpixels: Superpixels | None
    edges: np.ndarray | None
    undefined: dict[str, str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.valid.shape  # type: ignore[return-value]

    @property
    def dense(self) -> bool:
        return self.valid_fraction >= DENSE_MIN_FRACTION


def _fill_nearest(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if valid.all():
        return values
    index = distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return values[tuple(index)]


def _slic_labels(disp: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """SLIC labels at GT size; very large maps are segmented at SLIC_MAX_SIDE (nearest
    sampling) and the labels mapped back by nearest neighbour."""
    filled = _fill_nearest(disp, valid)
    lo, hi = float(filled.min()), float(filled.max())
    norm = (filled - lo) / (hi - lo) if hi > lo else np.zeros_like(filled)
    h, w = norm.shape
    scale = min(1.0, SLIC_MAX_SIDE / max(h, w))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = np.minimum((np.arange(sh) + 0.5) * h / sh, h - 1).astype(int)
    cols = np.minimum((np.arange(sw) + 0.5) * w / sw, w - 1).astype(int)
    small = norm[np.ix_(rows, cols)] * SLIC_RANGE
    labels = slic(small, n_segments=SLIC_SEGMENTS, compactness=SLIC_COMPACTNESS, channel_axis=None, start_label=0)
    if (sh, sw) == (h, w):
        return labels
    up_r = np.minimum(np.arange(h) * sh // h, sh - 1)
    up_c = np.minimum(np.arange(w) * sw // w, sw - 1)
    return labels[np.ix_(up_r, up_c)]


def superpixel_pairs(disp: np.ndarray, valid: np.ndarray, seed: int = 0) -> Superpixels:
    """Superpixels of a GT disparity map with invalid pixels, and their ordinal pairs
    (see the module docstring for how invalid pixels are handled)."""
    labels = _slic_labels(disp, valid)
    n = int(labels.max()) + 1
    h, w = labels.shape
    rr, cc = np.mgrid[0:h, 0:w]
    lv, rv, cv = labels[valid], rr[valid], cc[valid]
    total = np.bincount(labels.ravel(), minlength=n)
    nvalid = np.bincount(lv, minlength=n)
    keep = (nvalid > 0) & (nvalid >= SUPERPIXEL_MIN_VALID * total)
    safe = np.maximum(nvalid, 1)
    mean_r = np.bincount(lv, weights=rv, minlength=n) / safe
    mean_c = np.bincount(lv, weights=cv, minlength=n) / safe
    d2 = (rv - mean_r[lv]) ** 2 + (cv - mean_c[lv]) ** 2
    order = np.lexsort((d2, lv))
    first_labels, first = np.unique(lv[order], return_index=True)
    snap = order[first]
    centre_r = np.zeros(n, dtype=int)
    centre_c = np.zeros(n, dtype=int)
    centre_r[first_labels] = rv[snap]
    centre_c[first_labels] = cv[snap]
    kept = np.flatnonzero(keep)
    index_of = np.full(n, -1)
    index_of[kept] = np.arange(kept.size)
    centres = np.stack([centre_r[kept], centre_c[kept]], axis=1)

    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    differ = a != b
    pairs = np.unique(np.sort(np.stack([a[differ], b[differ]], axis=1), axis=1), axis=0)
    pairs = index_of[pairs] if pairs.size else np.zeros((0, 2), dtype=int)
    adjacent = pairs[(pairs >= 0).all(axis=1)] if pairs.size else np.zeros((0, 2), dtype=int)
    return Superpixels(labels=labels, centres=centres, adjacent=adjacent, random=random_pairs(kept.size, seed))


def random_pairs(n: int, seed: int, partners: int = ORD_PARTNERS) -> np.ndarray:
    """Each of ``n`` items paired with ``min(partners, n-1)`` distinct others drawn
    uniformly with ``default_rng(seed)``; (n*k, 2) int array."""
    k = min(partners, n - 1)
    if k <= 0:
        return np.zeros((0, 2), dtype=int)
    rng = np.random.default_rng(seed)
    offsets = rng.integers(1, n, size=(n, k))
    while True:
        srt = np.sort(offsets, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
        if not dup.any():
            break
        offsets[dup] = rng.integers(1, n, size=(int(dup.sum()), k))
    first = np.repeat(np.arange(n), k)
    return np.stack([first, (first + offsets.ravel()) % n], axis=1)


def depth_edges(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Canny (sigma sqrt 2, thresholds 0.1 / 0.2) of min-max-normalised depth OR-ed with
    that of normalised inverse depth, restricted to ``valid`` (the Canny mask). A map
    that is flat over the valid pixels has no edges."""
    edges = np.zeros(valid.shape, dtype=bool)
    if not valid.any():
        return edges
    d = np.where(valid, depth, 1.0).astype(np.float64)
    for m in (d, 1.0 / d):
        lo, hi = float(m[valid].min()), float(m[valid].max())
        if not hi - lo > 1e-12 * max(abs(hi), 1e-300):
            continue
        norm = np.where(valid, np.clip((m - lo) / (hi - lo), 0.0, 1.0), 0.0)
        edges |= canny(norm, sigma=CANNY_SIGMA, low_threshold=CANNY_LOW, high_threshold=CANNY_HIGH, mask=valid, mode="nearest")
    return edges


def prepare_ground_truth(gt: np.ndarray, gt_kind: str = "depth", seed: int = 0) -> GroundTruth:
    """GT depth/disparity, validity, superpixels and edges (the last two only for dense
    GT); ``seed`` fixes ORD's random pairing."""
    if gt_kind not in ("depth", "disparity"):
        raise ValueError(f"gt_kind must be 'depth' or 'disparity', got {gt_kind!r}")
    arr = np.asarray(gt, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"ground truth must be a 2-D map, got shape {arr.shape}")
    valid = valid_mask(arr)
    safe = np.where(valid, arr, 1.0)
    depth = np.where(valid, safe if gt_kind == "depth" else 1.0 / safe, 0.0)
    disparity = np.where(valid, 1.0 / safe if gt_kind == "depth" else safe, 0.0)
    fraction = float(valid.mean()) if valid.size else 0.0
    undefined: dict[str, str] = {}
    if not valid.any():
        undefined = {k: "ground truth has no valid pixel" for k in METRIC_KEYS}
        return GroundTruth(gt_kind, depth, disparity, valid, fraction, None, None, undefined)
    if fraction < DENSE_MIN_FRACTION:
        reason = f"ground truth too sparse for structure metrics ({fraction:.1%} valid < {DENSE_MIN_FRACTION:.0%})"
        undefined = {k: reason for k in STRUCTURE_KEYS}
        return GroundTruth(gt_kind, depth, disparity, valid, fraction, None, None, undefined)
    sp = superpixel_pairs(disparity, valid, seed)
    return GroundTruth(gt_kind, depth, disparity, valid, fraction, sp, depth_edges(depth, valid), undefined)


@dataclass(frozen=True)
class Alignment:
    """How a prediction was brought to GT units: ``mode`` (``least-squares``, ``scale``
    or ``metric``), the ``space`` it was fitted (or read) in, ``scale``/``shift`` and the
    lower clip ``floor`` in that space."""

    mode: str
    space: str
    scale: float
    shift: float
    floor: float

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "space": self.space, "scale": self.scale, "shift": self.shift, "floor": self.floor}


def resolve_alignment(mode: str, pred_space: str, pred_metric: bool) -> tuple[str, str]:
    """(fit kind, space) for an alignment ``mode``: ``auto`` is least squares in the
    predictor's space for relative predictors and in depth for metric ones."""
    if mode not in ALIGNMENT_MODES:
        raise ValueError(f"unknown alignment {mode!r}; use one of {', '.join(ALIGNMENT_MODES)}")
    if pred_space not in ("disparity", "depth"):
        raise ValueError(f"prediction space must be 'disparity' or 'depth', got {pred_space!r}")
    if mode == "auto":
        return "least-squares", "depth" if pred_metric else pred_space
    if mode in ("disparity", "depth"):
        return "least-squares", mode
    if mode == "scale":
        return "scale", "depth"
    return "metric", pred_space


def sanitize64(pred: np.ndarray) -> np.ndarray:
    """float64 copy with non-finite pixels set to the median of the finite ones (0 when
    none is finite)."""
    arr = np.array(pred, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        arr[~finite] = float(np.median(arr[finite])) if finite.any() else 0.0
    return arr


def _to_space(pred: np.ndarray, pred_space: str, space: str) -> np.ndarray:
    return pred if pred_space == space else invert_with_floor(pred)


def align_prediction(
    pred: np.ndarray, pred_space: str, pred_metric: bool, ref: GroundTruth, mode: str = "auto"
) -> tuple[np.ndarray, Alignment]:
    """A prediction already at GT size -> aligned depth (float64, > 0 everywhere) and
    how it was aligned (see the module docstring)."""
    kind, space = resolve_alignment(mode, pred_space, pred_metric)
    x = _to_space(np.asarray(pred, np.float64), pred_space, space)
    target = ref.disparity if space == "disparity" else ref.depth
    valid = ref.valid
    a, b = 1.0, 0.0
    if kind == "least-squares" and valid.any():
        a, b = align_least_squares(torch.from_numpy(x[valid]), torch.from_numpy(target[valid]))
    elif kind == "scale" and valid.any():
        xv, tv = x[valid], target[valid]
        den = float(np.dot(xv, xv))
        a = float(np.dot(xv, tv)) / den if den > 0 else 1.0
    smallest = float(target[valid].min()) if valid.any() else 1.0
    floor = smallest if space == "disparity" else DEPTH_FLOOR * smallest
    aligned = np.maximum(a * x + b, floor)
    depth = aligned if space == "depth" else 1.0 / aligned
    return depth, Alignment(kind, space, float(a), float(b), floor)


def value_metrics(depth: np.ndarray, ref: GroundTruth) -> dict[str, float | None]:
    """delta_1..3, AbsRel and RMSE of aligned ``depth`` against GT at valid pixels."""
    if not ref.valid.any():
        return {k: None for k in VALUE_KEYS}
    p, g = depth[ref.valid], ref.depth[ref.valid]
    ratio = np.maximum(g / p, p / g)
    out: dict[str, float | None] = {f"delta{k}": float(np.mean(ratio < 1.25**k)) for k in (1, 2, 3)}
    out["rel"] = float(np.mean(np.abs(g - p) / g))
    out["rmse"] = float(np.sqrt(np.mean((g - p) ** 2)))
    return out


def ordinal_inputs(est_disp: np.ndarray, ref: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """(GT, estimate) disparity-like maps for ORD/D3R: GT / max(GT) in [m, 1] and the
    estimate min-max rescaled (over valid pixels) to [m, 1]; a constant estimate maps to
    all ones, so it orders no pair."""
    valid = ref.valid
    gt_n = ref.disparity / float(ref.disparity[valid].max())
    m = float(gt_n[valid].min())
    lo, hi = float(est_disp[valid].min()), float(est_disp[valid].max())
    if hi > lo:
        est_n = m + (1.0 - m) * (est_disp - lo) / (hi - lo)
    else:
        est_n = np.ones_like(est_disp)
    return gt_n, est_n


def ordinal_metrics(est_disp: np.ndarray, ref: GroundTruth) -> tuple[float | None, float | None, dict[str, str]]:
    """(ORD, D3R, reasons for None) of a disparity-like estimate at GT size."""
    sp = ref.superpixels
    if sp is None:
        return None, None, {k: ref.undefined.get(k, "no superpixels") for k in ("ord", "d3r")}
    gt_n, est_n = ordinal_inputs(est_disp, ref)
    g = gt_n[sp.centres[:, 0], sp.centres[:, 1]] if len(sp.centres) else np.zeros(0)
    e = est_n[sp.centres[:, 0], sp.centres[:, 1]] if len(sp.centres) else np.zeros(0)
    reasons: dict[str, str] = {}

    def share(pairs: np.ndarray, gate: float, ratio: float) -> float | None:
        if len(pairs) == 0:
            return None
        i, j = pairs[:, 0], pairs[:, 1]
        kept = ordinal(g[i], g[j], gate) != 0
        if not kept.any():
            return None
        i, j = i[kept], j[kept]
        return float(np.mean(ordinal(g[i], g[j], ratio) != ordinal(e[i], e[j], ratio)))

    d3r = share(sp.adjacent, D3R_GT_RATIO, D3R_RATIO)
    ord_err = share(sp.random, ORD_GT_RATIO, ORD_RATIO)
    if d3r is None:
        reasons["d3r"] = f"no adjacent superpixel pair with a GT discontinuity (ratio > {D3R_GT_RATIO})"
    if ord_err is None:
        reasons["ord"] = "no superpixel pair with a GT depth order"
    return ord_err, d3r, reasons


def dbe_metrics(pred_edges: np.ndarray, gt_edges: np.ndarray) -> tuple[float | None, float | None]:
    """(DBE_acc, DBE_comp) in pixels; None, None when the GT has no edge."""
    if not gt_edges.any():
        return None, None
    if not pred_edges.any():
        return DBE_MAX, DBE_MAX
    to_gt = distance_transform_edt(~gt_edges)[pred_edges]
    close = to_gt[to_gt < DBE_MAX]
    acc = float(close.mean()) if close.size else DBE_MAX
    to_pred = distance_transform_edt(~pred_edges)[gt_edges]
    comp = float(np.minimum(to_pred, DBE_MAX).mean())
    return acc, comp


def _ratio_boundaries(inv: np.ndarray, valid: np.ndarray, t: float) -> list[np.ndarray]:
    """Depth-Pro foreground/background boundaries: for each of the 4 neighbour directions
    (left, top, right, bottom), pairs whose inverse-depth ratio exceeds ``t``; only pairs
    of two valid pixels count."""
    vx = valid[:, 1:] & valid[:, :-1]
    vy = valid[1:, :] & valid[:-1, :]
    return [
        (inv[:, :-1] / inv[:, 1:] > t) & vx,
        (inv[:-1, :] / inv[1:, :] > t) & vy,
        (inv[:, 1:] / inv[:, :-1] > t) & vx,
        (inv[1:, :] / inv[:-1, :] > t) & vy,
    ]


def boundary_f1(pred_inv: np.ndarray, ref: GroundTruth) -> float | None:
    """Scale-invariant boundary F1 (Depth Pro) of a positive inverse-depth map.

    Per threshold t in linspace(1.05, 1.25, 10): precision and recall are averaged over
    the 4 directions, each direction counting only where it is defined (precision where
    the prediction has boundaries in it, recall where the GT has); F1 = 2PR/(P+R), 0
    when the prediction has no boundary. Depth Pro divides by max(count, 1) instead, so
    an empty direction scores 0 and even the exact map of a single straight edge gets
    F1 < 1; restricting the mean to defined directions fixes that and changes nothing
    on maps with boundaries in every direction. Thresholds at which the GT has no
    boundary are skipped and the weights t / sum(t) renormalised; None when the GT has
    no boundary at 1.05.
    """
    gt_inv = np.where(ref.valid, ref.disparity, 1.0)
    scores: list[float] = []
    weights: list[float] = []
    for t in BF1_THRESHOLDS:
        gts = _ratio_boundaries(gt_inv, ref.valid, float(t))
        if not any(g.any() for g in gts):
            continue
        prs = _ratio_boundaries(pred_inv, ref.valid, float(t))
        precision = [np.count_nonzero(p & g) / np.count_nonzero(p) for p, g in zip(prs, gts) if p.any()]
        recall = [np.count_nonzero(p & g) / np.count_nonzero(g) for p, g in zip(prs, gts) if g.any()]
        p = float(np.mean(precision)) if precision else 0.0
        r = float(np.mean(recall))
        scores.append(2 * p * r / (p + r) if p + r > 0 else 0.0)
        weights.append(float(t))
    if not scores:
        return None
    w = np.asarray(weights)
    return float(np.dot(scores, w / w.sum()))


@dataclass(frozen=True)
class PreparedPrediction:
    """A prediction at GT size: ``depth`` after alignment, ``disparity`` (raw, made
    disparity-like, for the ordinal metrics), its ``edges`` and the ``alignment``."""

    depth: np.ndarray
    disparity: np.ndarray
    edges: np.ndarray | None
    alignment: Alignment


def prepare_prediction(
    pred: np.ndarray, pred_space: str, pred_metric: bool, ref: GroundTruth, alignment: str = "auto"
) -> PreparedPrediction:
    """Resize (bilinear) to GT size, fill non-finite pixels, align; edges for dense GT."""
    if pred_space not in ("disparity", "depth"):
        raise ValueError(f"prediction space must be 'disparity' or 'depth', got {pred_space!r}")
    arr = np.asarray(pred)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"prediction must be a non-empty 2-D map, got shape {arr.shape}")
    full = resize_bilinear(sanitize64(arr), ref.shape)
    depth, info = align_prediction(full, pred_space, pred_metric, ref, alignment)
    disp = full if pred_space == "disparity" else invert_with_floor(full)
    edges = depth_edges(depth, ref.valid) if ref.edges is not None else None
    return PreparedPrediction(depth=depth, disparity=disp, edges=edges, alignment=info)


def score_prediction(prep: PreparedPrediction, ref: GroundTruth) -> dict[str, Any]:
    """The ten metrics of a prepared prediction, its ``alignment``, the GT's
    ``valid_fraction`` and, under ``undefined``, why each None metric is None."""
    out: dict[str, Any] = dict(value_metrics(prep.depth, ref))
    undefined = dict(ref.undefined)
    if ref.superpixels is not None:
        out["ord"], out["d3r"], reasons = ordinal_metrics(prep.disparity, ref)
        undefined.update(reasons)
    else:
        out["ord"] = out["d3r"] = None
    if ref.edges is not None and prep.edges is not None:
        out["dbe_acc"], out["dbe_comp"] = dbe_metrics(prep.edges, ref.edges)
        if out["dbe_acc"] is None:
            undefined["dbe_acc"] = undefined["dbe_comp"] = "ground truth has no Canny edge"
        out["bf1"] = boundary_f1(1.0 / prep.depth, ref)
        if out["bf1"] is None:
            undefined["bf1"] = f"ground truth has no boundary at ratio {BF1_THRESHOLDS[0]:.2f}"
    else:
        out["dbe_acc"] = out["dbe_comp"] = out["bf1"] = None
    result = {k: out[k] for k in METRIC_KEYS}
    result["alignment"] = prep.alignment.as_dict()
    result["valid_fraction"] = ref.valid_fraction
    result["undefined"] = {k: v for k, v in undefined.items() if result.get(k) is None}
    return result


def evaluate_prediction(
    pred: np.ndarray,
    pred_space: Space,
    pred_metric: bool,
    gt: np.ndarray | None,
    gt_kind: str = "depth",
    *,
    alignment: AlignmentMode = "auto",
    reference: GroundTruth | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Score one prediction against GT; returns the ten :data:`METRIC_KEYS` (None where
    undefined), ``alignment``, ``valid_fraction`` and ``undefined`` reasons.

    ``pred`` is in ``pred_space`` ("disparity" or "depth") at any size; ``gt`` is 0 (or
    non-finite) where invalid. Pass a ``reference`` from :func:`prepare_ground_truth` of
    the same ``gt`` (``gt`` may then be None) to score many predictions without
    recomputing superpixels and edges.
    """
    ref = reference if reference is not None else prepare_ground_truth(gt, gt_kind, seed)
    if reference is not None and gt is not None and np.shape(gt) != ref.shape:
        raise ValueError(f"reference was prepared for a {ref.shape} GT, got {np.shape(gt)}")
    return score_prediction(prepare_prediction(pred, pred_space, pred_metric, ref, alignment), ref)
