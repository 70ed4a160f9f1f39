"""Pure functions of the gated fusion head: the candidate maps the network chooses among.

The gated refiner never writes depth values of its own. Per pixel it outputs a convex
combination (softmax weights) of candidates built from its two inputs:

* the LOW map itself (values and structure of the consistent prediction);
* frequency merges ``G_s(LOW) + H - G_s(H)`` for a few Gaussian scales ``s``: LOW's
  values below the scale, HIGH's detail above it (``H`` = HIGH least-squares aligned to
  LOW, per sample);
* ``H`` itself.

So where LOW and HIGH agree every candidate equals LOW and so does the output, whatever
the weights; the output can never leave the per-pixel envelope of the candidates (no
invented halos); and its LOW weight says where detail was NOT taken from HIGH (Omega is
one minus it).
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


def fusion_candidates(low: torch.Tensor, high: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """The candidates (Bx(2+len(sigmas))xHxW): LOW, one frequency merge per sigma (px, in
    increasing order), HIGH aligned to LOW. ``low`` and ``high`` are Bx1xHxW, same size."""
    if low.shape != high.shape or low.ndim != 4 or low.shape[1] != 1:
        raise ValueError(f"low and high must both be Bx1xHxW of one shape, got {tuple(low.shape)} and {tuple(high.shape)}")
    aligned = align_to(high, low)
    out = [low]
    for sigma in sigmas:
        both = gaussian_blur(torch.cat([low, aligned], dim=1), float(sigma))
        out.append(both[:, :1] + aligned - both[:, 1:])
    out.append(aligned)
    return torch.cat(out, dim=1)


def blend_candidates(candidates: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(depth, weights): the softmax over the channel dim of ``logits`` (BxKxHxW) applied to
    ``candidates`` of the same shape; depth is Bx1xHxW."""
    if candidates.shape != logits.shape:
        raise ValueError(f"candidates {tuple(candidates.shape)} and logits {tuple(logits.shape)} differ in shape")
    weights = torch.softmax(logits.float(), dim=1).to(candidates.dtype)
    return (weights * candidates).sum(1, keepdim=True), weights
