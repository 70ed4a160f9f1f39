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
the candidate closest to the ground truth (docs/QUALITY.md): without the median, even
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


def median_blur(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Median over ``kernel`` x ``kernel`` windows (replicate border) of a BxCxHxW map."""
    if kernel <= 1:
        return x
    pad = kernel // 2
    return kornia.filters.median_blur(F.pad(x, (pad, pad, pad, pad), mode="replicate"), kernel)[..., pad:-pad, pad:-pad]


def fusion_candidates(
    low: torch.Tensor, high: torch.Tensor, sigmas: tuple[float, ...], median: int = 5
) -> torch.Tensor:
    """The candidates (Bx(3+len(sigmas))xHxW), see the module docstring: LOW, then
    ``LOW + hp_s(M)`` per sigma (px, increasing), ``LOW + M``, and HIGH aligned to LOW;
    ``M`` is the ``median`` x ``median`` median of HIGH - LOW. ``low`` and ``high`` are
    Bx1xHxW of one size."""
    if low.shape != high.shape or low.ndim != 4 or low.shape[1] != 1:
        raise ValueError(f"low and high must both be Bx1xHxW of one shape, got {tuple(low.shape)} and {tuple(high.shape)}")
    diff = align_to(high, low) - low
    m = median_blur(diff, median)
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
