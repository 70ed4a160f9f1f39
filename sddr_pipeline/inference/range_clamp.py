"""Local-range clamp: keep the refined map inside the range its consistent input spans nearby.

The refinement network fuses two maps; a value outside every value the consistent LOW
map takes within a few pixels is an overshoot the network made up, not a detail it
transferred. The first bundled weights (``sddr-small-residual``) drew such halos (a dark
band outside an object's edge, a bright one inside it) even when LOW and HIGH agreed
exactly, which cost REL and ORD in flat regions. Clamping to the local min/max of LOW
(least-squares aligned to the refined map) removes them without blurring anything: a
pixel inside the range is left exactly as the network made it. The gated head cannot
leave its candidates' range: the gated presets, and the bundled weights, run with the clamp
off (``range_clamp`` 0 in their config; opt-in); only ``sddr-small-residual`` keeps it. The radius is a fraction of the working long side
(default 1/128, 8 px at 1024), chosen on the training split (middlebury2005_2006), see
docs/QUALITY_HISTORY.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .options import RANGE_CLAMP, check_range_clamp

__all__ = ["RANGE_CLAMP", "check_range_clamp", "clamp_radius", "clamp_to_local_range", "local_range"]

def clamp_radius(shape: tuple[int, ...], fraction: float) -> int:
    """The clamp radius in pixels for a map of ``shape`` (..., H, W): ``fraction`` x long side, rounded."""
    return int(round(check_range_clamp(fraction) * max(shape[-2], shape[-1])))


def _sliding(x: torch.Tensor, k: int, dim: int, op) -> torch.Tensor:
    """``op`` (torch.maximum/minimum) over every window of ``k`` samples along ``dim``
    (valid positions only): window doubling, O(log k) elementwise passes."""
    out, span = x, 1
    while span * 2 <= k:
        n = out.shape[dim] - span
        out = op(out.narrow(dim, 0, n), out.narrow(dim, span, n))
        span *= 2
    if span < k:
        n = out.shape[dim] - (k - span)
        out = op(out.narrow(dim, 0, n), out.narrow(dim, k - span, n))
    return out


def local_range(x: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of Bx1xHxW ``x`` over the (2 radius + 1)^2 window around each pixel
    (borders replicated)."""
    if radius < 1:
        return x, x
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    k = 2 * radius + 1
    # a square window's extreme is the extreme over rows of the extremes over columns
    lo = _sliding(_sliding(padded, k, -1, torch.minimum), k, -2, torch.minimum)
    hi = _sliding(_sliding(padded, k, -1, torch.maximum), k, -2, torch.maximum)
    return lo, hi


def clamp_to_local_range(x: torch.Tensor, reference: torch.Tensor, radius: int) -> torch.Tensor:
    """``x`` limited, per pixel, to the min/max ``reference`` takes within ``radius`` px.

    Both are Bx1xHxW in the same units (align ``reference`` to ``x`` first); ``radius``
    0 returns ``x`` unchanged.
    """
    if x.shape != reference.shape:
        raise ValueError(f"x {tuple(x.shape)} and reference {tuple(reference.shape)} must have the same shape")
    if radius < 1:
        return x
    lo, hi = local_range(reference.to(x.dtype), radius)
    return torch.minimum(torch.maximum(x, lo), hi)
