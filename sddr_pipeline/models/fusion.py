"""Pure functions of the gated fusion head: the candidate maps the network chooses among.

The gated refiner never writes depth values of its own. Per pixel it outputs a convex
combination (softmax weights) of candidates, each LOW plus a filtered version of the
difference ``D = H - LOW`` (``H`` = HIGH least-squares aligned to LOW, per sample):

* LOW itself (values and structure of the consistent prediction);
* ``LOW + hp_s(M)`` for a few Gaussian scales ``s``, ``M = median(D)`` over a small
  window and ``hp_s = 1 - G_s``: HIGH's detail above scale ``s`` over LOW's values (a
  frequency merge of LOW and ``LOW + M``). The median removes the RGB texture a
  high-resolution prediction copies (thin, low-amplitude ripples in D) and keeps depth
  steps (wide in D where LOW blurs them);
* ``LOW + M`` and ``LOW + D = H``.

So where LOW and HIGH agree every candidate equals LOW and so does the output, whatever
the weights; the output can never leave the per-pixel envelope of the candidates (no
invented halos); and its LOW weight says where detail was NOT taken from HIGH (Omega is
one minus it). The candidate set was chosen with an oracle that picks, per 16 px block (scripts/candidate_oracle.py),
the candidate closest to the ground truth (docs/QUALITY_HISTORY.md): without the median, even
that oracle reached only 0.70x LOW's D3R on middlebury2014q at default noise.
"""
from __future__ import annotations

import math

import kornia
import torch
import torch.nn.functional as F

_EPS = 1e-12


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a BxCxHxW map (replicate border).

    Up to sigma 4 px an exact separable kernel of 6 sigma + 1 taps; beyond, the map is
    area-downsampled by ``f = sigma // 2``, blurred with sigma / f and upsampled
    bilinearly: a close low-pass at a fraction of the cost of a 100+ tap kernel.
    """
    if sigma <= 0:
        return x
    if sigma <= 4.0:
        k = 2 * int(math.ceil(3 * sigma)) + 1
        return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="replicate")
    f = int(sigma // 2)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, -(-h // f)), max(1, -(-w // f))), mode="area")
    s = sigma / f
    k = 2 * int(math.ceil(3 * s)) + 1
    small = kornia.filters.gaussian_blur2d(small, (k, k), (s, s), border_type="replicate")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def align_to(src: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``src`` least-squares scale/shift aligned to ``ref``, per sample (Bx1xHxW each).

    A flat ``src`` (no defined scale) is shifted to ``ref``'s mean; the fit runs in the
    inputs' dtype promoted to at least float32.
    """
    dtype = torch.promote_types(src.dtype, torch.float32)
    s = src.to(dtype).flatten(1)
    r = ref.to(dtype).flatten(1)
    ms, mr = s.mean(1, keepdim=True), r.mean(1, keepdim=True)
    ds = s - ms
    var = (ds * ds).mean(1, keepdim=True)
    cov = (ds * (r - mr)).mean(1, keepdim=True)
    ok = var > _EPS
    scale = torch.where(ok, cov / torch.where(ok, var, torch.ones_like(var)), torch.ones_like(var))
    out = scale * ds + mr
    return out.view_as(src).to(src.dtype)


def _median3(x: torch.Tensor) -> torch.Tensor:
    """Exact 3x3 median (replicate border) in 19 min/max passes: sort each vertical triplet
    (shared by the three windows beside it), then the median of a 3x3 window is the median
    of (largest column minimum, median of column medians, smallest column maximum)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    a, b, c = p[..., :-2, :], p[..., 1:-1, :], p[..., 2:, :]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    mid, hi = torch.minimum(hi, c), torch.maximum(hi, c)
    lo, mid = torch.minimum(lo, mid), torch.maximum(lo, mid)
    big_lo = torch.maximum(torch.maximum(lo[..., :-2], lo[..., 1:-1]), lo[..., 2:])
    small_hi = torch.minimum(torch.minimum(hi[..., :-2], hi[..., 1:-1]), hi[..., 2:])
    med = _median_of_3(mid[..., :-2], mid[..., 1:-1], mid[..., 2:])
    return _median_of_3(big_lo, med, small_hi)


def _median_of_3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def median_blur(x: torch.Tensor, kernel: int, scale: int = 1) -> torch.Tensor:
    """Median over ``kernel`` x ``kernel`` windows (replicate border) of a BxCxHxW map.

    ``scale`` > 1: the median of the map area-downsampled by ``scale``, upsampled back
    bilinearly - a ``kernel * scale`` px median at a small fraction of its cost (3 at scale
    2 costs about 3% of kornia's exact 5x5 at 1024 px and removes texture as well on the
    validation scenes, docs/QUALITY_HISTORY.md). 3x3 runs :func:`_median3` (about 2x faster than
    kornia's selection network on CPU, the same values); other windows take ``torch.median``
    over the unfolded windows (the same values as kornia's, about 1.5x faster at 7x7 on CPU;
    ``kernel``\ :sup:`2` copies of the map in memory)."""
    if kernel <= 1:
        return x
    if scale > 1:
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(-(-h // scale), -(-w // scale)), mode="area")
        return F.interpolate(median_blur(small, kernel), size=(h, w), mode="bilinear", align_corners=False)
    if kernel == 3:
        return _median3(x)
    pad = kernel // 2
    windows = F.pad(x, (pad, pad, pad, pad), mode="replicate").unfold(2, kernel, 1).unfold(3, kernel, 1)
    return windows.reshape(*windows.shape[:4], kernel * kernel).median(-1).values


def fusion_candidates(
    low: torch.Tensor, high: torch.Tensor, sigmas: tuple[float, ...], median: int = 5, median_scale: int = 1
) -> torch.Tensor:
    """The candidates (Bx(3+len(sigmas))xHxW), see the module docstring: LOW, then
    ``LOW + hp_s(M)`` per sigma (px, increasing), ``LOW + M``, and HIGH aligned to LOW;
    ``M`` is the ``median`` x ``median`` median of HIGH - LOW (taken at 1/``median_scale``
    resolution, :func:`median_blur`). ``low`` and ``high`` are Bx1xHxW of one size."""
    if low.shape != high.shape or low.ndim != 4 or low.shape[1] != 1:
        raise ValueError(f"low and high must both be Bx1xHxW of one shape, got {tuple(low.shape)} and {tuple(high.shape)}")
    diff = align_to(high, low) - low
    m = median_blur(diff, median, median_scale)
    out = [low]
    for sigma in sigmas:
        out.append(low + m - gaussian_blur(m, float(sigma)))
    out += [low + m, low + diff]
    return torch.cat(out, dim=1)


def blend_candidates(candidates: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(depth, weights): the softmax over the channel dim of ``logits`` (BxKxHxW) applied to
    ``candidates`` of the same shape; depth is Bx1xHxW."""
    if candidates.shape != logits.shape:
        raise ValueError(f"candidates {tuple(candidates.shape)} and logits {tuple(logits.shape)} differ in shape")
    weights = torch.softmax(logits.float(), dim=1).to(candidates.dtype)
    return (weights * candidates).sum(1, keepdim=True), weights
