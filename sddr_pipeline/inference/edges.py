"""Edge representation G: gradient magnitude of a (bilateral-filtered) depth map."""
from __future__ import annotations

import torch
import kornia


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of a Bx1xHxW map (replicate border), same shape."""
    g = kornia.filters.spatial_gradient(x.float(), mode="sobel", order=1, normalized=True)
    return torch.sqrt(g[:, :, 0] ** 2 + g[:, :, 1] ** 2)


def edge_map(x: torch.Tensor, bilateral: bool = True) -> torch.Tensor:
    """G = Sobel magnitude of ``x`` after an edge-preserving bilateral filter (5x5,
    sigma_space 1.5, sigma_color 0.05 of the normalised range), as the paper's G_0."""
    x = x.float()
    if bilateral:
        lo = x.amin(dim=(-2, -1), keepdim=True)
        span = (x.amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-8)
        xn = (x - lo) / span
        xn = kornia.filters.bilateral_blur(xn, (5, 5), 0.05, (1.5, 1.5), border_type="replicate")
        x = xn * span + lo
    return gradient_magnitude(x)
