"""Edge representation G: gradient magnitude of a (bilateral-filtered) depth map."""
from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of a Bx1xHxW map (replicate border), same shape."""
    g = kornia.filters.spatial_gradient(x.float(), mode="sobel", order=1, normalized=True)
    return torch.sqrt(g[:, :, 0] ** 2 + g[:, :, 1] ** 2)


def bilateral_filter(x: torch.Tensor, radius: int = 2, sigma_space: float = 1.5, sigma_color: float = 0.05) -> torch.Tensor:
    """Bilateral filter of a BxCxHxW tensor with a (2r+1)^2 window and replicate border.

    Weights ``exp(-d^2 / 2 sigma_space^2) * exp(-(x_q - x_p)^2 / 2 sigma_color^2)``,
    normalised per pixel. Computed with shifted views (no unfold), so memory stays at a
    few copies of the input even at 4K.
    """
    h, w = x.shape[-2:]
    xp = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    acc = torch.zeros_like(x)
    wsum = torch.zeros_like(x)
    inv_c = -0.5 / (sigma_color * sigma_color)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            ws = torch.exp(torch.tensor(-(dy * dy + dx * dx) / (2 * sigma_space * sigma_space)))
            q = xp[..., radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            wgt = torch.exp((q - x) ** 2 * inv_c) * ws
            acc += wgt * q
            wsum += wgt
    return acc / wsum


def edge_map(x: torch.Tensor, bilateral: bool = True) -> torch.Tensor:
    """G = Sobel magnitude of ``x`` after an edge-preserving bilateral filter (5x5,
    sigma_space 1.5, sigma_color 0.05 of the map's range), as the paper's G_0."""
    x = x.float()
    if bilateral:
        lo = x.amin(dim=(-2, -1), keepdim=True)
        span = (x.amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-8)
        x = bilateral_filter((x - lo) / span) * span + lo
    return gradient_magnitude(x)
