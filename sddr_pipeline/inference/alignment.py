"""Scale/shift alignment of one map to another: plain, robust, and in the gradient domain.

The value fits take tensors of the same shape (any leading dims) and an optional boolean
mask of valid pixels, and return Python floats ``(scale, shift)`` such that
``scale * src + shift`` approximates ``ref``; :func:`align_gradient_batch` returns one
such pair per sample of a batch, as tensors. Sums are accumulated in float64.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.fusion import gaussian_blur

__all__ = [
    "align_gradient_batch", "align_least_squares", "align_robust", "fit_sparse_depth", "forward_gradients", "gaussian_blur",
    "sample_nearest",
]

_EPS = 1e-12


def _masked(src: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    s = src.double().reshape(-1)
    r = ref.double().reshape(-1)
    if mask is not None:
        m = mask.reshape(-1).bool()
        s, r = s[m], r[m]
    return s, r


def _weighted_fit(s: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    sw = float(w.sum())
    if sw <= _EPS:
        return 1.0, 0.0
    ms = float((w * s).sum()) / sw
    mr = float((w * r).sum()) / sw
    var = float((w * (s - ms) ** 2).sum())
    if var <= _EPS * max(1.0, sw):
        return 1.0, mr - ms
    scale = float((w * (s - ms) * (r - mr)).sum()) / var
    return scale, mr - scale * ms


def align_least_squares(src: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, float]:
    """Closed-form least squares ``argmin_{a,b} sum (a*src + b - ref)^2`` over the mask.

    A constant ``src`` has no defined scale: it returns scale 1 and the shift of the means.
    """
    s, r = _masked(src, ref, mask)
    if s.numel() == 0:
        return 1.0, 0.0
    return _weighted_fit(s, r, torch.ones_like(s))


def align_robust(
    src: torch.Tensor,
    ref: torch.Tensor,
    mask: torch.Tensor | None = None,
    iters: int = 10,
    huber: float = 1.345,
) -> tuple[float, float]:
    """Scale/shift by iteratively reweighted least squares with Huber weights.

    The residual scale is re-estimated each iteration from the median absolute deviation,
    so a minority of wild pixels (wrong sparse points, holes) cannot drag the fit.
    """
    s, r = _masked(src, ref, mask)
    if s.numel() == 0:
        return 1.0, 0.0
    w = torch.ones_like(s)
    a, b = _weighted_fit(s, r, w)
    for _ in range(iters):
        res = r - (a * s + b)
        mad = float((res - res.median()).abs().median()) * 1.4826
        if mad <= _EPS:
            break
        u = (res / (huber * mad)).abs()
        w = torch.where(u <= 1, torch.ones_like(u), 1.0 / u.clamp_min(_EPS))
        a_new, b_new = _weighted_fit(s, r, w)
        converged = abs(a_new - a) <= 1e-9 * max(1.0, abs(a)) and abs(b_new - b) <= 1e-9 * max(1.0, abs(b))
        a, b = a_new, b_new
        if converged:
            break
    return a, b


def forward_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along W and H (shapes ...xHx(W-1) and ...x(H-1)xW)."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def align_gradient_batch(
    src: torch.Tensor, ref: torch.Tensor, sigma: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample of a batch (Bx1xHxW): scale fitted in the GRADIENT domain, shift from the
    values; computed on the tensors' device with no host synchronisation, returns
    ``(scale, shift)`` tensors of shape B.

    ``scale = <grad src, grad ref> / <grad src, grad src>`` (forward differences),
    ``shift = mean(ref) - scale * mean(src)``. Matching gradients, not values, keeps a
    window's edges from being bent to the blurry estimate it is aligned to.

    ``sigma`` > 0 blurs both maps with a Gaussian of that many pixels before taking
    gradients. Without it a sharp window result fitted to a blurry estimate gets far too
    small a scale (a step's gradient is concentrated in one pixel of ``src`` but spread
    over several in ``ref``); at a common blur both edges have the same profile, while
    the fit still ignores the low-frequency offsets the gradient domain is meant to skip.
    Where a sample's gradient fit is degenerate (flat ``src`` or non-positive scale) it
    falls back to the value least-squares fit (scale 1 for a flat ``src``).
    """
    s = src.double().flatten(1)
    r = ref.double().flatten(1)
    gs, gr = (gaussian_blur(src, sigma), gaussian_blur(ref, sigma)) if sigma > 0 else (src, ref)
    gxs, gys = forward_gradients(gs.double())
    gxr, gyr = forward_gradients(gr.double())
    num = (gxs * gxr).flatten(1).sum(1) + (gys * gyr).flatten(1).sum(1)
    den = (gxs * gxs).flatten(1).sum(1) + (gys * gys).flatten(1).sum(1)
    grad_ok = (den > _EPS) & (num > 0)
    g_scale = num / torch.where(grad_ok, den, torch.ones_like(den))
    ms, mr = s.mean(1), r.mean(1)
    var = ((s - ms[:, None]) ** 2).sum(1)
    cov = ((s - ms[:, None]) * (r - mr[:, None])).sum(1)
    var_ok = var > _EPS * s.shape[1]
    v_scale = torch.where(var_ok, cov / torch.where(var_ok, var, torch.ones_like(var)), torch.ones_like(var))
    scale = torch.where(grad_ok, g_scale, v_scale)
    shift = mr - scale * ms
    return scale.to(src.dtype), shift.to(src.dtype)


def sample_nearest(values: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    """The pixels of an HxW map nearest to Nx2 (row, col) ``points`` (rounded, clipped to
    the map)."""
    pts = np.asarray(points, dtype=np.float64)
    h, w = values.shape[-2:]
    rows = np.clip(np.round(pts[:, 0]).astype(np.int64), 0, h - 1)
    cols = np.clip(np.round(pts[:, 1]).astype(np.int64), 0, w - 1)
    return values[torch.from_numpy(rows).to(values.device), torch.from_numpy(cols).to(values.device)]


def fit_sparse_depth(values: torch.Tensor, depth: np.ndarray, space: str = "inverse") -> tuple[float, float]:
    """Robust scale/shift (:func:`align_robust`) of map ``values`` at N sparse points to
    their metric ``depth``: to 1/depth for a disparity-like map (``space="inverse"``), to
    depth itself for ``"depth"``. Points whose depth is not finite and positive are left
    out; fewer than 3 left is a ``ValueError``. The one fit of a map to SfM points, LiDAR
    or RGB-D samples."""
    if space not in ("inverse", "depth"):
        raise ValueError(f"space must be 'inverse' or 'depth', got {space!r}")
    d = np.asarray(depth, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0)
    if ok.sum() < 3:
        raise ValueError(f"scale reference has {int(ok.sum())} valid points; at least 3 are needed")
    src = torch.as_tensor(values)
    if not ok.all():
        src = src[torch.from_numpy(ok).to(src.device)]
    target = 1.0 / d[ok] if space == "inverse" else d[ok]
    return align_robust(src, torch.from_numpy(target).to(src.device))
