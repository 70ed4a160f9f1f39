"""Window layout, feathered blending weights and per-window resolution for two-stage
(coarse-to-fine) refinement. Pure functions with exact, testable outputs."""
from __future__ import annotations

import math

import torch

from .options import ResolutionPolicy

__all__ = [
    "Box", "ResolutionPolicy", "axis_windows", "blend_windows", "edge_density", "feather_weights", "window_boxes",
]

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), end-exclusive


def axis_windows(length: int, count: int, overlap: float) -> list[tuple[int, int]]:
    """``count`` windows of one common size covering ``[0, length)``, neighbours sharing
    ``overlap`` of a window's size; first starts at 0, last ends at ``length``.

    >>> axis_windows(100, 2, 0.25)
    [(0, 58), (42, 100)]
    """
    if count < 1 or length < 1:
        raise ValueError(f"need count >= 1 and length >= 1, got {count}, {length}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if count == 1:
        return [(0, length)]
    size = min(length, math.ceil(length / (count - (count - 1) * overlap)))
    starts = [round(i * (length - size) / (count - 1)) for i in range(count)]
    return [(s, s + size) for s in starts]


def window_boxes(height: int, width: int, per_axis: int, overlap: float = 0.25) -> list[Box]:
    """The ``per_axis**2`` boxes of one coarse-to-fine step, row-major."""
    ys = axis_windows(height, per_axis, overlap)
    xs = axis_windows(width, per_axis, overlap)
    return [(y0, x0, y1, x1) for (y0, y1) in ys for (x0, x1) in xs]


def _ramp(n: int, feather: int, taper_start: bool, taper_end: bool) -> torch.Tensor:
    idx = torch.arange(n, dtype=torch.float64)
    w = torch.ones(n, dtype=torch.float64)
    if feather > 0:
        if taper_start:
            w = torch.minimum(w, (idx + 0.5) / feather)
        if taper_end:
            w = torch.minimum(w, (n - idx - 0.5) / feather)
    return w


def feather_weights(box: Box, height: int, width: int, feather: int) -> torch.Tensor:
    """Blending weight of a window: 1 inside, falling linearly to ~0 over ``feather`` px at
    every side that lies inside the image (sides on the image border stay at 1, since
    no other window covers them)."""
    y0, x0, y1, x1 = box
    wy = _ramp(y1 - y0, feather, y0 > 0, y1 < height)
    wx = _ramp(x1 - x0, feather, x0 > 0, x1 < width)
    return (wy[:, None] * wx[None, :]).float()


def blend_windows(
    maps: list[torch.Tensor], boxes: list[Box], height: int, width: int, feather: int
) -> torch.Tensor:
    """Feathered average of window maps (each HwxWw, same device) into an HxW map.

    Pixels no window covers would be 0; the layouts used here always cover the image.
    """
    device = maps[0].device
    acc = torch.zeros(height, width, dtype=torch.float32, device=device)
    wsum = torch.zeros(height, width, dtype=torch.float32, device=device)
    for m, box in zip(maps, boxes):
        y0, x0, y1, x1 = box
        w = feather_weights(box, height, width, feather).to(device)
        acc[y0:y1, x0:x1] += w * m.float()
        wsum[y0:y1, x0:x1] += w
    return acc / wsum.clamp_min(1e-12)


def edge_density(edges: torch.Tensor, box: Box, threshold: float) -> float:
    """Share of a window's pixels whose edge strength exceeds ``threshold``."""
    y0, x0, y1, x1 = box
    return float((edges[..., y0:y1, x0:x1] > threshold).float().mean())


