"""The gated fusion head: candidates, blending, and the identity properties the network
has by construction (LOW where its inputs agree; never outside the candidates)."""
from __future__ import annotations

import pytest
import torch

from sddr_pipeline.models import PRESETS, Refiner, RefinerConfig, SDDRNet
from sddr_pipeline.models.fusion import (
    align_to,
    blend_candidates,
    fusion_candidates,
    gaussian_blur,
    median_blur,
    sorting_network,
)
from sddr_pipeline.models.network import LOW_LOGIT


def _maps(h: int = 96, w: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 1, h, w, generator=g)
    high = torch.rand(1, 1, h, w, generator=g)
    return low, high


def test_align_to_recovers_an_affine_copy_and_handles_flat_maps() -> None:
    ref = torch.rand(2, 1, 16, 20, generator=torch.Generator().manual_seed(1))
    src = (ref - 3.0) / 2.0
    torch.testing.assert_close(align_to(src, ref), ref, atol=1e-6, rtol=0)
    flat = torch.full_like(ref, 5.0)
    out = align_to(flat, ref)
    torch.testing.assert_close(out, ref.mean(dim=(2, 3), keepdim=True).expand_as(ref), atol=1e-6, rtol=0)


def test_median_blur_matches_a_brute_force_median() -> None:
    x = torch.rand(1, 1, 9, 11, generator=torch.Generator().manual_seed(2))
    out = median_blur(x, 3)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")[0, 0]
    expect = torch.stack([padded[i:i + 3, j:j + 3].flatten().median() for i in range(9) for j in range(11)]).view(9, 11)
    torch.testing.assert_close(out[0, 0], expect)
    assert median_blur(x, 1) is x


@pytest.mark.parametrize("kernel", [3, 5, 7, 9, 15])
def test_median_blur_equals_brute_force_with_ties_batches_and_channels(kernel: int) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 4, (2, 3, 7, 6), generator=g).float()  # many ties
    out = median_blur(x, kernel)
    pad = kernel // 2
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    expect = torch.stack([padded[b, c, i:i + kernel, j:j + kernel].flatten().median()
                          for b in range(2) for c in range(3) for i in range(7) for j in range(6)]).view(2, 3, 7, 6)
    assert torch.equal(out, expect)
    if kernel in (5, 7):  # the same values as kornia's selection network
        import kornia

        assert torch.equal(out, kornia.filters.median_blur(padded, kernel)[..., pad:-pad, pad:-pad])


@pytest.mark.parametrize("kernel", [5, 7, 9])
@pytest.mark.parametrize("height", [29, 64, 150])  # one strip, exactly one, three (the last partial)
def test_median_blur_equals_torch_median_on_random_maps_of_odd_shapes(kernel: int, height: int) -> None:
    g = torch.Generator().manual_seed(kernel)
    x = torch.randn(1, 2, height, 41, generator=g)
    pad = kernel // 2
    windows = torch.nn.functional.pad(x, (pad,) * 4, mode="replicate").unfold(2, kernel, 1).unfold(3, kernel, 1)
    assert torch.equal(median_blur(x, kernel), windows.reshape(1, 2, height, 41, -1).median(-1).values)


@pytest.mark.parametrize("n", range(1, 12))
def test_sorting_network_sorts_every_zero_one_input(n: int) -> None:
    bits = torch.tensor([[(v >> i) & 1 for i in range(n)] for v in range(2**n)], dtype=torch.float32)
    wires = list(bits.T)
    for a, b in sorting_network(n):
        assert a < b < n
        wires[a], wires[b] = torch.minimum(wires[a], wires[b]), torch.maximum(wires[a], wires[b])
    assert torch.equal(torch.stack(wires, 1), bits.sort(1).values)  # the 0-1 principle


def test_median_blur_rejects_an_even_kernel() -> None:
    with pytest.raises(ValueError, match="odd kernel"):
        median_blur(torch.zeros(1, 1, 8, 8), 4)


def test_half_resolution_median_removes_thin_texture_and_keeps_steps() -> None:
    x = torch.zeros(1, 1, 32, 40)
    x[..., 20:] = 1.0  # a depth step on an even column
    ripple = x.clone()
    ripple[..., 3::6, :] += 0.2  # one-pixel rows of texture
    ripple[..., :, [3, 9, 31, 37]] -= 0.2  # and columns, away from the step
    out = median_blur(ripple, 3, 2)
    assert torch.equal(out[..., :16], torch.zeros_like(out[..., :16]))
    assert torch.equal(out[..., 22:], torch.ones_like(out[..., 22:]))
    assert median_blur(x, 3, 2).shape == x.shape and median_blur(x[..., :31, :39], 3, 2).shape == (1, 1, 31, 39)


def test_candidates_are_low_plus_filtered_differences() -> None:
    low, high = _maps()
    cands = fusion_candidates(low, 2 * high + 1, (2.0, 6.0), median=3)
    assert cands.shape == (1, 5, 96, 128)
    torch.testing.assert_close(cands[:, :1], low)
    aligned = align_to(high, low)
    torch.testing.assert_close(cands[:, 4:], aligned, atol=1e-5, rtol=0)
    m = median_blur(aligned - low, 3)
    torch.testing.assert_close(cands[:, 3:4], low + m, atol=1e-5, rtol=0)
    torch.testing.assert_close(cands[:, 1:2], low + m - gaussian_blur(m, 2.0), atol=1e-5, rtol=0)


def test_the_median_removes_thin_texture_and_keeps_a_depth_step() -> None:
    low = torch.zeros(1, 1, 40, 40)
    high = low.clone()
    high[..., :, 20:] = 1.0  # a step LOW does not have
    high[..., 10, :] += 0.3  # a one-pixel texture line
    m = fusion_candidates(low, high, (3.0,), median=5)[:, 2:3]  # LOW + M
    aligned = align_to(high, low)
    assert float((m[..., 10, 2:18] - m[..., 12, 2:18]).abs().max()) < 1e-6  # the line is gone
    step = m[..., 30, 25] - m[..., 30, 15]
    torch.testing.assert_close(step, aligned[..., 30, 25] - aligned[..., 30, 15], atol=1e-5, rtol=0)


def test_candidates_all_equal_low_when_inputs_agree() -> None:
    low, _ = _maps()
    cands = fusion_candidates(low, low.clone(), (3.0, 8.0, 24.0), median=5)
    torch.testing.assert_close(cands, low.expand_as(cands), atol=1e-6, rtol=0)


def test_blend_is_a_convex_mix() -> None:
    cands = torch.stack([torch.full((4, 5), float(v)) for v in (0, 1, 2)])[None]
    logits = torch.zeros(1, 3, 4, 5)
    logits[:, 2] = 50.0
    depth, weights = blend_candidates(cands, logits)
    torch.testing.assert_close(depth, torch.full((1, 1, 4, 5), 2.0))
    torch.testing.assert_close(weights.sum(1), torch.ones(1, 4, 5))
    depth, _ = blend_candidates(cands, torch.zeros(1, 3, 4, 5))
    torch.testing.assert_close(depth, torch.full((1, 1, 4, 5), 1.0))


def _gated(head_scale: int, seed: int) -> SDDRNet:
    return Refiner.from_config(PRESETS["sddr-small"].replace(head_scale=head_scale), seed=seed).net


@pytest.mark.parametrize("head_scale", [1, 2])
def test_untrained_gated_net_returns_low(head_scale: int) -> None:
    net = _gated(head_scale, 0)
    low, high = _maps()
    with torch.no_grad():
        out = net(low, high)
        cands = fusion_candidates(low, high, net.config.fusion_sigmas, net.config.fusion_median)
    k = cands.shape[1]
    w_low = torch.exp(torch.tensor(LOW_LOGIT)) / (torch.exp(torch.tensor(LOW_LOGIT)) + k - 1)
    bound = (1 - w_low) * (cands - low).abs().amax(1, keepdim=True)
    assert bool(((out.depth - low).abs() <= bound + 1e-6).all())
    assert out.weights is not None and out.weights.shape == (1, k, 96, 128)
    torch.testing.assert_close(out.omega, 1 - out.weights[:, :1])


def _scrambled(seed: int, head_scale: int = 1) -> SDDRNet:
    """A gated net whose head weights are random (as after training): the properties below
    must hold for ANY weights, not only at initialisation."""
    net = _gated(head_scale, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (net.head_out.weight, net.head_out.bias):
            p.copy_(torch.randn(p.shape, generator=g) * 2.0)
    return net.eval()


@pytest.mark.parametrize("size, head_scale", [((96, 128), 1), ((700, 1500), 1), ((96, 128), 2), ((700, 1500), 4)])
def test_any_gated_net_returns_low_where_inputs_agree(size: tuple[int, int], head_scale: int) -> None:
    net = _scrambled(3, head_scale)
    low, _ = _maps(*size, seed=4)
    with torch.no_grad():
        out = net(low, low.clone())
    torch.testing.assert_close(out.depth, low, atol=2e-6, rtol=0)


@pytest.mark.parametrize("head_scale", [1, 2])
def test_any_gated_net_stays_inside_its_candidates(head_scale: int) -> None:
    net = _scrambled(5, head_scale)
    low, high = _maps(seed=6)
    with torch.no_grad():
        out = net(low, high)
        cands = fusion_candidates(low, high, net.config.fusion_sigmas, net.config.fusion_median)
    assert bool((out.depth >= cands.amin(1, keepdim=True) - 1e-5).all())
    assert bool((out.depth <= cands.amax(1, keepdim=True) + 1e-5).all())


def test_fusion_config_is_validated_and_old_configs_load_as_residual() -> None:
    with pytest.raises(ValueError, match="fusion must be"):
        RefinerConfig(fusion="free")
    with pytest.raises(ValueError, match="fusion_sigmas"):
        RefinerConfig(fusion_sigmas=(8.0, 3.0))
    with pytest.raises(ValueError, match="fusion_median"):
        RefinerConfig(fusion_median=4)
    with pytest.raises(ValueError, match="head_scale"):
        RefinerConfig(head_scale=3)
    data = PRESETS["sddr-small"].to_dict()
    del data["fusion"], data["fusion_sigmas"], data["fusion_median"]
    assert RefinerConfig.from_dict(data).fusion == "residual"
    assert PRESETS["sddr-small"].fusion == "gated"
    assert PRESETS["sddr-small-residual"].fusion == "residual"


def test_fusion_temperature_flattens_the_same_choice_and_keeps_the_invariants() -> None:
    net = _scrambled(7, 1)
    low, high = _maps(seed=8)
    with torch.no_grad():
        base = net(low, high)
        net.config = net.config.replace(fusion_temperature=3.0)
        warm = net(low, high)
        agree = net(low, low.clone())
    # softmax(logits / T) is the T-th root of the same weights, renormalised
    root = base.weights ** (1 / 3)
    torch.testing.assert_close(warm.weights, root / root.sum(1, keepdim=True), atol=1e-5, rtol=1e-4)
    assert float(warm.weights.amax(1).mean()) < float(base.weights.amax(1).mean())
    torch.testing.assert_close(agree.depth, low, atol=2e-6, rtol=0)
    assert bool((warm.depth >= warm.candidates.amin(1, keepdim=True) - 1e-5).all())
    assert bool((warm.depth <= warm.candidates.amax(1, keepdim=True) + 1e-5).all())


@pytest.mark.parametrize("bad", [0, -1.0, 100.0, True, "2"])
def test_fusion_temperature_is_validated(bad) -> None:
    with pytest.raises(ValueError, match="fusion_temperature must be a number in"):
        RefinerConfig(fusion_temperature=bad)
