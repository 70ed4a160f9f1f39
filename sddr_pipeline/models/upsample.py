"""Pure functions for the fast full-resolution path: box filter and guided upsampling.

The refinement network runs at most at ``max_side``; its depth is brought back to the
input size by a fast guided filter (He & Sun, 2015) guided by the full-resolution
high-res prediction, so edges come from the detailed input at negligible cost.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _box_sum_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over a window of ``2*radius+1`` along ``dim`` (zero outside): 2r+1 shifted adds,
    much faster on CPU than a pooling kernel for the small radii used here."""
    n = x.shape[dim]
    pad = (radius, radius) if dim == -1 else (0, 0, radius, radius)
    xp = F.pad(x, pad)
    out = xp.narrow(dim, 0, n).clone()
    for shift in range(1, 2 * radius + 1):
        out += xp.narrow(dim, shift, n)
    return out


def _window_count(n: int, radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Number of in-image pixels in each position's clipped 1-D window."""
    i = torch.arange(n, device=device)
    return ((i + radius).clamp(max=n - 1) - (i - radius).clamp(min=0) + 1).to(dtype)


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of ``x`` (B,C,H,W) over (2r+1)^2 windows clipped to the image.

    Separable: the clipped window is a rectangle, so the sum and the pixel count both
    factor into a vertical and a horizontal pass.
    """
    if x.ndim != 4:
        raise ValueError(f"box_filter expects a BxCxHxW tensor, got shape {tuple(x.shape)}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if radius == 0:
        return x
    h, w = x.shape[-2:]
    total = _box_sum_1d(_box_sum_1d(x, radius, -2), radius, -1)
    count = _window_count(h, radius, x.device, x.dtype)[:, None] * _window_count(w, radius, x.device, x.dtype)
    return total / count


def guided_upsample(
    target_lr: torch.Tensor,
    guide_lr: torch.Tensor,
    guide_hr: torch.Tensor,
    radius: int,
    eps: float,
) -> torch.Tensor:
    """Upsample ``target_lr`` to the size of ``guide_hr`` with a fast guided filter.

    Fits ``target ~= a * guide + b`` in every (2r+1)^2 window at low resolution (ridge
    regulariser ``eps``), smooths a and b, upsamples them bilinearly and returns
    ``a_up * guide_hr + b_up``. Shapes: target/guide_lr (B,C,h,w), guide_hr (B,C,H,W) with
    C equal for all three. Computed in at least float32, returned in ``target_lr``'s dtype.
    """
    if target_lr.ndim != 4 or guide_lr.ndim != 4 or guide_hr.ndim != 4:
        raise ValueError("guided_upsample expects BxCxHxW tensors")
    if target_lr.shape[-2:] != guide_lr.shape[-2:]:
        raise ValueError(f"target_lr {tuple(target_lr.shape)} and guide_lr {tuple(guide_lr.shape)} differ in size")
    if guide_lr.shape[:2] != guide_hr.shape[:2]:
        raise ValueError(f"guide_lr {tuple(guide_lr.shape)} and guide_hr {tuple(guide_hr.shape)} differ in B or C")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    out_dtype = target_lr.dtype
    work = torch.promote_types(out_dtype, torch.float32)
    p = target_lr.to(work)
    i = guide_lr.to(work)
    mean_i = box_filter(i, radius)
    mean_p = box_filter(p, radius)
    cov_ip = box_filter(i * p, radius) - mean_i * mean_p
    var_i = (box_filter(i * i, radius) - mean_i * mean_i).clamp_min(0.0)
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    c = a.shape[1]
    ab = box_filter(torch.cat([a, b], dim=1), radius)
    ab = F.interpolate(ab, size=guide_hr.shape[-2:], mode="bilinear", align_corners=False)
    return torch.addcmul(ab[:, c:], ab[:, :c], guide_hr.to(work)).to(out_dtype)


def area_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area (box-average) downsampling of a BxCxHxW tensor to ``size``; an exact integer
    factor takes the faster ``avg_pool2d`` path."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    fh, fw = h // size[0], w // size[1]
    if fh == fw and fh * size[0] == h and fw * size[1] == w:
        return F.avg_pool2d(x, fh)
    return F.interpolate(x, size=size, mode="area")
