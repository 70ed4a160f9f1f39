"""Local-range clamp of the refined map: exact expectations on hand-built maps."""
import numpy as np
import pytest
import torch

from sddr_pipeline.inference.core import refine_predictions
from sddr_pipeline.inference.range_clamp import (
    RANGE_CLAMP,
    check_range_clamp,
    clamp_radius,
    clamp_to_local_range,
    local_range,
)
from sddr_pipeline.inference.options import RefineOptions
from sddr_pipeline.models import RefinerConfig
from sddr_pipeline.models.refiner import RefinerOutput
from sddr_pipeline.predictors.base import OutputKind


def as4d(a):
    return torch.tensor(np.asarray(a, dtype=np.float32))[None, None]


def test_local_range_of_a_step_is_the_step_widened_by_the_radius():
    ref = as4d(np.repeat([[0, 0, 0, 0, 1, 1, 1, 1]], 3, axis=0))
    lo, hi = local_range(ref, 1)
    assert lo[0, 0, 1].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert hi[0, 0, 1].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("radius", [1, 2, 3, 5, 8, 13])
def test_local_range_equals_a_square_max_pool(radius):
    x = torch.rand(2, 1, 37, 51, generator=torch.Generator().manual_seed(radius))
    padded = torch.nn.functional.pad(x, (radius,) * 4, mode="replicate")
    lo, hi = local_range(x, radius)
    assert torch.equal(hi, torch.nn.functional.max_pool2d(padded, 2 * radius + 1, stride=1))
    assert torch.equal(lo, -torch.nn.functional.max_pool2d(-padded, 2 * radius + 1, stride=1))


def test_overshoot_halo_at_a_step_is_removed_and_the_edge_kept():
    ref = as4d(np.repeat([[0, 0, 0, 0, 1, 1, 1, 1]], 3, axis=0))
    x = as4d(np.repeat([[0, 0, -0.2, 0, 1, 1.3, 1, 1]], 3, axis=0))
    out = clamp_to_local_range(x, ref, 1)
    assert out[0, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_values_inside_the_local_range_are_untouched():
    ref = as4d(np.linspace(0, 1, 64).reshape(8, 8))
    x = ref + 0.001 * torch.sin(torch.arange(64.0)).view(1, 1, 8, 8)
    inside = (x >= local_range(ref, 2)[0]) & (x <= local_range(ref, 2)[1])
    out = clamp_to_local_range(x, ref, 2)
    assert torch.equal(out[inside], x[inside])


def test_radius_zero_and_constant_reference():
    x = as4d(np.random.default_rng(0).random((5, 6)))
    assert torch.equal(clamp_to_local_range(x, torch.zeros_like(x), 0), x)
    assert torch.equal(clamp_to_local_range(x, torch.full_like(x, 0.5), 2), torch.full_like(x, 0.5))


def test_shape_mismatch_and_bad_fraction_are_errors():
    with pytest.raises(ValueError, match="same shape"):
        clamp_to_local_range(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), 1)
    with pytest.raises(ValueError, match="range_clamp"):
        check_range_clamp(-0.1)
    with pytest.raises(ValueError, match="range_clamp"):
        RefineOptions(range_clamp=0.5)
    with pytest.raises(ValueError, match="range_clamp"):
        RefinerConfig(range_clamp=0.3)


def test_radius_is_a_fraction_of_the_long_side():
    assert clamp_radius((1, 1, 768, 1024), RANGE_CLAMP) == 8
    assert clamp_radius((300, 200), 0.01) == 3
    assert clamp_radius((300, 200), 0.0) == 0


class Overshooter:
    """A fake refiner that returns HIGH with a +0.5 spike: the clamp must cut the spike."""

    device = torch.device("cpu")

    def __call__(self, low, high):
        out = high.clone()
        out[..., 100, 100] += 0.5
        ones = torch.ones_like(out)
        return RefinerOutput(out, out, out, ones, ones, ones)


def test_refine_predictions_clamps_to_low_and_can_be_disabled():
    ramp = np.tile(np.linspace(1.0, 2.0, 256, dtype=np.float32), (256, 1))
    kind = OutputKind("disparity", False)
    on = refine_predictions(ramp, ramp, kind, Overshooter(), RANGE_CLAMP)  # radius 256/128 = 2 px
    off = refine_predictions(ramp, ramp, kind, Overshooter(), range_clamp=0)
    assert float(off.refined[0, 0, 100, 100]) == pytest.approx(100 / 255 + 0.5, abs=1e-5)
    assert float(on.refined[0, 0, 100, 100]) == pytest.approx(102 / 255, abs=1e-3)
    mask = torch.ones_like(on.refined, dtype=torch.bool)
    mask[..., 100, 100] = False
    assert torch.allclose(on.refined[mask], off.refined[mask], atol=1e-3)


def test_distill_settings_range_clamp_defaults_to_the_bundled_recipe_and_validates():
    from sddr_pipeline.training.config import DistillSettings

    assert DistillSettings().range_clamp == 0.0
    assert DistillSettings(range_clamp=RANGE_CLAMP).range_clamp == RANGE_CLAMP
    with pytest.raises(ValueError, match="distill.range_clamp"):
        DistillSettings(range_clamp=0.3)
