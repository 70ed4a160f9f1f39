"""The edge map G: kornia's bilateral filter agrees with the shifted-view filter it replaced."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sddr_pipeline.data.synthetic import make_scene
from sddr_pipeline.inference.edges import (
    BILATERAL_KERNEL,
    BILATERAL_SIGMA_COLOR,
    BILATERAL_SIGMA_SPACE,
    edge_map,
    gradient_magnitude,
)

REAL_IMAGE = Path(__file__).resolve().parents[1] / "docs" / "img" / "tsdf_sample.png"
MAP_NAMES = ("random, unfold path", "random, tap path", "synthetic depth (m)", "synthetic disparity", "real image (luminance)")


def reference_bilateral(x: torch.Tensor, radius: int, sigma_space: float, sigma_color: float) -> torch.Tensor:
    """The former hand-written filter: (2r+1)^2 shifted views of the replicate-padded map,
    weights exp(-(dy^2+dx^2) / 2 sigma_space^2) * exp(-(x_q - x_p)^2 / 2 sigma_color^2)."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    acc, wsum = torch.zeros_like(x), torch.zeros_like(x)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            ws = torch.exp(torch.tensor(-(dy * dy + dx * dx) / (2 * sigma_space * sigma_space)))
            q = xp[..., radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            wgt = torch.exp((q - x) ** 2 * (-0.5 / (sigma_color * sigma_color))) * ws
            acc += wgt * q
            wsum += wgt
    return acc / wsum


def reference_edge_map(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    lo = x.amin(dim=(-2, -1), keepdim=True)
    span = (x.amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-8)
    radius = BILATERAL_KERNEL // 2
    return gradient_magnitude(reference_bilateral((x - lo) / span, radius, BILATERAL_SIGMA_SPACE, BILATERAL_SIGMA_COLOR) * span + lo)


@pytest.fixture(scope="module")
def maps() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    depth = make_scene(384, 512, 3).depth
    real = np.asarray(Image.open(REAL_IMAGE).convert("L"), dtype=np.float32)[120:360, 660:1140] / 255.0  # the chair
    out = {
        # kornia filters inputs under 65,536 values through unfolded windows (as on CUDA), larger ones tap by tap
        "random, unfold path": torch.rand(2, 1, 40, 56, generator=g),
        "random, tap path": 5.0 * torch.rand(1, 1, 300, 400, generator=g) + 1.0,
        "synthetic depth (m)": torch.from_numpy(depth)[None, None],
        "synthetic disparity": torch.from_numpy(1.0 / depth)[None, None],
        "real image (luminance)": torch.from_numpy(real)[None, None],
    }
    assert tuple(out) == MAP_NAMES
    return out


@pytest.mark.parametrize("name", MAP_NAMES)
def test_edge_map_matches_the_hand_written_bilateral(maps, name):
    x = maps[name]
    new, old = edge_map(x), reference_edge_map(x)
    # measured: at most 7e-7 of the map's largest edge (float32 rounding of the same sums)
    assert float((new - old).abs().max()) <= 1e-5 * float(old.abs().max())
    assert torch.equal(edge_map(x, bilateral=False), gradient_magnitude(x.float()))


def test_bilateral_parameters_map_one_to_one_onto_kornia(maps):
    import kornia

    x = maps["real image (luminance)"]
    for radius, sigma_space, sigma_color in [(1, 1.0, 0.2), (2, 1.5, 0.05), (3, 2.0, 0.01)]:
        ours = reference_bilateral(x, radius, sigma_space, sigma_color)
        theirs = kornia.filters.bilateral_blur(
            x, 2 * radius + 1, sigma_color, (sigma_space, sigma_space), border_type="replicate", color_distance_type="l2"
        )
        assert float((ours - theirs).abs().max()) < 1e-5  # measured <= 1e-6 on this [0, 1] image
