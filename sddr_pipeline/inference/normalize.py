"""Pure functions that bring raw predictions into the refiner's input space and back.

The refiner works on disparity-like maps (larger = nearer) min-max normalised to [0, 1]
at one working size. Predictions in depth units are inverted first; NaN/inf pixels are
filled, and a constant map normalises to zeros instead of dividing by zero.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from ..predictors.base import OutputKind

_TINY = 1e-8


def sanitize(pred: np.ndarray) -> np.ndarray:
    """float32 copy of ``pred`` with every non-finite pixel set to the median of the finite
    ones (0 when none is finite), so later steps never see NaN or inf."""
    arr = np.asarray(pred, dtype=np.float32)
    finite = np.isfinite(arr)
    if finite.all():
        return arr.copy()
    fill = float(np.median(arr[finite])) if finite.any() else 0.0
    return np.where(finite, arr, np.float32(fill)).astype(np.float32)


def to_disparity_like(pred: np.ndarray, kind: OutputKind) -> np.ndarray:
    """Map a sanitised prediction to a disparity-like map (larger = nearer).

    In a depth map, 0 and negative values mean "no depth" (sensor holes, masked sky):
    they take the depth of the nearest positive pixel, so a hole cannot become a huge
    disparity that dominates normalisation. Depths are then inverted above a small floor
    (1e-3 of their largest value); a map with no positive pixel becomes all zeros.
    """
    arr = np.asarray(pred, dtype=np.float32)
    if kind.space == "disparity":
        return arr
    positive = arr > 0
    if not positive.any():
        return np.zeros_like(arr)
    if not positive.all():
        index = distance_transform_edt(~positive, return_distances=False, return_indices=True)
        arr = arr[tuple(index)]
    return invert_with_floor(arr).astype(np.float32)


def invert_with_floor(x: np.ndarray, rel: float = 1e-3, tiny: float = 1e-6) -> np.ndarray:
    """``1 / x`` after clipping ``x`` to ``rel`` of its largest value (at least ``tiny``),
    in ``x``'s dtype: depth <-> disparity for a map of positive values, where a tiny or
    zero pixel must not become a huge value that dominates everything else. The one rule
    for inference inputs, the metrics and the COLMAP fit."""
    peak = float(np.max(x)) if np.size(x) else 0.0
    return 1.0 / np.maximum(x, max(peak * rel, tiny))


def from_disparity_like(disp: torch.Tensor, kind: OutputKind) -> torch.Tensor:
    """Inverse of :func:`to_disparity_like` for the final, aligned map."""
    if kind.space == "disparity":
        return disp
    peak = float(disp.max()) if disp.numel() else 0.0
    floor = max(peak * 1e-4, 1e-8)
    return 1.0 / disp.clamp_min(floor)


def minmax_normalize(x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(x - min) / (max - min) per whole tensor, with (min, max); constant maps -> zeros."""
    lo = float(x.min())
    hi = float(x.max())
    span = hi - lo
    if not np.isfinite(span) or span <= _TINY * max(1.0, abs(hi)):
        return torch.zeros_like(x), lo, hi
    return (x - lo) / span, lo, hi


def minmax_normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max normalisation of a Bx1xHxW batch; constant samples -> zeros.

    Stays on the tensor's device (no host round trip), for batched windows.
    """
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = hi - lo
    ok = span > _TINY * hi.abs().clamp_min(1.0)
    return torch.where(ok, (x - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(x))


def resize(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Resize a ...xHxW tensor: area-like (antialiased bilinear) when shrinking, bilinear
    when enlarging; a no-op at the same size. ``antialias=False`` shrinks with plain
    bilinear sampling too: for maps that are already smooth where they are not sharp (a
    refined depth map), which the antialiasing filter would only blur at its edges."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shape = x.shape
    x4 = x.reshape(-1, 1, *shape[-2:])
    shrink = antialias and (size[0] < shape[-2] or size[1] < shape[-1])
    out = F.interpolate(x4, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out.reshape(*shape[:-2], *size)


def prepare_prediction_batch(preds: list[np.ndarray], kind: OutputKind, device: torch.device | str) -> list[torch.Tensor]:
    """Raw predictions -> finite disparity-like 1x1xHxW tensors on ``device``."""
    return [as_map_tensor(to_disparity_like(sanitize(p), kind), device) for p in preds]


def as_map_tensor(arr: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A 2-D numpy map as a 1x1xHxW float32 tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None].to(device)
