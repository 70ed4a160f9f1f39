"""Training-free fusion baselines for the low/high prediction pair, on disparity-like maps.

Both take the raw LOW and HIGH predictions already made disparity-like (any sizes) and
return one map at ``size`` = (h, w) in the LOW map's units, so they can be scored and
restored exactly like SDDR's output.

* :func:`freq_merge`: values (low frequencies) from the low map, details (high
  frequencies) from the high map, split by one Gaussian.
* :func:`guided_fusion`: a guided filter (He et al., 2010) with the upsampled low map as
  the filtering input and the aligned high map as the guide: the output is locally an
  affine function of the high map (its edges) fitted to the low map's values.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter, uniform_filter

from ..inference.alignment import align_least_squares

#: guided_fusion's default epsilon, in units of the [0, 1]-normalised low map: local
#: standard deviations well below sqrt(1e-3) ~ 3 % of the depth range are smoothed (taken
#: from the low map), larger steps in the guide are kept as edges.
GUIDED_EPS = 1e-3


def freq_sigma(size: tuple[int, int]) -> float:
    """freq_merge's Gaussian sigma: the long side / 256."""
    return max(size) / 256.0


def guided_radius(size: tuple[int, int]) -> int:
    """guided_fusion's default box radius: long side / 128 (at least 1), i.e. twice
    freq_merge's sigma, so both baselines split low and high frequencies at the same
    spatial scale (6 px at 718 px, 8 px at 1024 px)."""
    return max(1, round(max(size) / 128))


def resize_cubic(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a 2-D map to ``size`` (antialiased when shrinking), float64."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape == tuple(size):
        return arr.copy()
    shrink = size[0] < arr.shape[0] or size[1] < arr.shape[1]
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bicubic", align_corners=False, antialias=shrink)[0, 0].numpy()


def _check(low: np.ndarray, high: np.ndarray, size: tuple[int, int]) -> None:
    for name, arr in (("low", low), ("high", high)):
        if np.ndim(arr) != 2 or np.size(arr) == 0:
            raise ValueError(f"{name} must be a non-empty 2-D map, got shape {np.shape(arr)}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} has non-finite values; sanitize it first")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (h, w) with positive sides, got {size}")


def _aligned_pair(low: np.ndarray, high: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Both maps bicubically resized to ``size``; the high one least-squares aligned to
    the low one (so identical inputs give identical maps)."""
    lo = resize_cubic(low, size)
    hi = resize_cubic(high, size)
    a, b = align_least_squares(torch.from_numpy(hi), torch.from_numpy(lo))
    return lo, a * hi + b


def freq_merge(low: np.ndarray, high: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``G(low) + high - G(high)`` at ``size``: low bicubic-upsampled, high resized the
    same way and least-squares aligned to it, G a Gaussian of sigma long side / 256."""
    size = (int(size[0]), int(size[1]))
    _check(low, high, size)
    lo, hi = _aligned_pair(low, high, size)
    sigma = freq_sigma(size)
    out = gaussian_filter(lo, sigma, mode="nearest") + hi - gaussian_filter(hi, sigma, mode="nearest")
    return out.astype(np.float32)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter: ``q = mean(a) * guide + mean(b)`` with per-window
    ``a = cov(guide, src) / (var(guide) + eps)``, ``b = mean(src) - a mean(guide)``;
    box windows of (2r+1)^2 px, replicated borders.

    ``kornia.filters.guided_blur`` (kernel 2r+1, ``border_type="replicate"``, float64)
    computes the same to 1e-12 (``tests/test_eval.py``) but took 6.5x as long on CPU
    (3.2 s against 0.49 s at 1024x768, r=8, one thread): scipy's running box sums stay,
    since every evaluated image runs this baseline."""
    def box(x: np.ndarray) -> np.ndarray:
        return uniform_filter(x, size=2 * radius + 1, mode="nearest")

    mean_i, mean_p = box(guide), box(src)
    cov = box(guide * src) - mean_i * mean_p
    var = box(guide * guide) - mean_i * mean_i
    a = cov / (np.maximum(var, 0.0) + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def guided_fusion(
    low: np.ndarray, high: np.ndarray, size: tuple[int, int], radius: int | None = None, eps: float = GUIDED_EPS
) -> np.ndarray:
    """Guided-filter fusion at ``size``: input = low upsampled (bicubic), guide = high
    aligned to it; both min-max normalised by the low map's range so ``eps`` is unit-free
    (default :data:`GUIDED_EPS`), result returned in the low map's units. ``radius``
    defaults to :func:`guided_radius`; the filter is :func:`guided_filter`."""
    size = (int(size[0]), int(size[1]))
    _check(low, high, size)
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    r = guided_radius(size) if radius is None else int(radius)
    if r < 1:
        raise ValueError(f"radius must be >= 1, got {r}")
    lo, hi = _aligned_pair(low, high, size)
    vmin, span = float(lo.min()), float(lo.max() - lo.min())
    span = span if span > 0 else 1.0
    out = guided_filter((hi - vmin) / span, (lo - vmin) / span, r, eps)
    return (out * span + vmin).astype(np.float32)
