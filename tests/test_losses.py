"""Unit tests of the SDDR training losses on hand-built tensors with exact expectations."""
from __future__ import annotations

import math

import pytest
import torch

from sddr_pipeline.models import RefinerOutput
from sddr_pipeline.training.losses import (
    LossWeights,
    align_masked,
    selection_loss,
    selection_targets,
    edge_guided_gradient_loss,
    fusion_loss,
    gradient_matching,
    high_frequency_regions,
    kmeans,
    loss_gt,
    masked_downsample,
    sobel_magnitude,
    ssi_normalize,
    ssi_trimmed_mae,
    total_loss,
)


def t4(values, shape) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_ssi_normalize_median_and_mean_absolute_deviation_over_valid_pixels():
    x = t4([0, 1, 2, 3, 4, 100], (1, 1, 2, 3))
    mask = t4([1, 1, 1, 1, 1, 0], (1, 1, 2, 3)).bool()
    out = ssi_normalize(x, mask)
    # median 2, mean |x - 2| = (2 + 1 + 0 + 1 + 2) / 5 = 1.2; the invalid pixel becomes 0
    expected = t4([-2 / 1.2, -1 / 1.2, 0, 1 / 1.2, 2 / 1.2, 0], (1, 1, 2, 3))
    assert torch.allclose(out, expected, atol=1e-6)


def test_ssi_normalize_is_per_sample_and_uses_the_lower_median_for_even_counts():
    x = torch.stack([t4([1, 2, 3, 10], (1, 2, 2)), t4([5, 5, 5, 9], (1, 2, 2))])
    mask = torch.ones_like(x, dtype=torch.bool)
    out = ssi_normalize(x, mask)
    # sample 0: lower median 2, deviation (1 + 0 + 1 + 8) / 4 = 2.5
    assert torch.allclose(out[0].flatten(), torch.tensor([-0.4, 0.0, 0.4, 3.2]), atol=1e-6)
    # sample 1: median 5, deviation 4 / 4 = 1
    assert torch.allclose(out[1].flatten(), torch.tensor([0.0, 0.0, 0.0, 4.0]), atol=1e-6)


def test_trimmed_mae_drops_the_worst_fifth_of_pixels():
    target = t4([0, 1, 2, 3, 4], (1, 1, 1, 5))
    pred = t4([0, 1, 2, 3, 9], (1, 1, 1, 5))
    mask = torch.ones_like(target, dtype=torch.bool)
    # ssi(target) = [-2, -1, 0, 1, 2] / 1.2; ssi(pred): median 2, deviation 11 / 5 = 2.2
    res = [abs(-2 / 2.2 + 2 / 1.2), abs(-1 / 2.2 + 1 / 1.2), 0.0, abs(1 / 2.2 - 1 / 1.2), abs(7 / 2.2 - 2 / 1.2)]
    kept = sorted(res)[:4]  # floor(0.2 * 5) = 1 pixel dropped: the largest
    assert float(ssi_trimmed_mae(pred, target, mask)) == pytest.approx(sum(kept) / 4, abs=1e-6)
    assert float(ssi_trimmed_mae(pred, target, mask, trim=0.0)) == pytest.approx(sum(res) / 5, abs=1e-6)


def test_trimmed_mae_is_scale_shift_invariant_and_ignores_invalid_pixels():
    target = t4([0.5, 1, 2, 3, 4, 7, 8, 0], (1, 1, 2, 4))
    mask = t4([1, 1, 1, 1, 1, 1, 1, 0], (1, 1, 2, 4)).bool()
    pred = 3 * target + 7
    pred[0, 0, 1, 3] = 1e6  # an invalid pixel with a wild value
    assert float(ssi_trimmed_mae(pred, target, mask)) == pytest.approx(0.0, abs=1e-6)


def test_trimmed_mae_averages_samples_and_skips_empty_ones():
    target = torch.stack([t4([0, 1, 2, 3, 4], (1, 1, 5)), t4([0, 1, 2, 3, 4], (1, 1, 5))])
    pred = torch.stack([t4([0, 1, 2, 3, 9], (1, 1, 5)), t4([9, 9, 9, 9, 9], (1, 1, 5))])
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[1] = False
    single = ssi_trimmed_mae(pred[:1], target[:1], mask[:1])
    assert float(ssi_trimmed_mae(pred, target, mask)) == pytest.approx(float(single), abs=1e-7)


def test_gradient_matching_row_two_scales():
    target = t4([0, 1, 2, 3], (1, 1, 1, 4))
    pred = t4([0, 2, 1, 3], (1, 1, 1, 4))
    mask = torch.ones_like(target, dtype=torch.bool)
    # ssi(target) = [-1, 0, 1, 2] (lower median 1, deviation 1); ssi(pred) = [-1, 1, 0, 2]
    # R = [0, 1, -1, 0]: scale 0: (1 + 2 + 1) / 4 pixels = 1; scale 1: R[::2] = [0, -1] -> 1 / 2
    assert float(gradient_matching(pred, target, mask, scales=1)) == pytest.approx(1.0, abs=1e-6)
    assert float(gradient_matching(pred, target, mask, scales=2)) == pytest.approx(1.5, abs=1e-6)
    # the same residual along the other axis gives the same value
    col = gradient_matching(pred.transpose(-1, -2), target.transpose(-1, -2), mask.transpose(-1, -2), scales=2)
    assert float(col) == pytest.approx(1.5, abs=1e-6)


def test_gradient_matching_skips_pairs_with_an_invalid_pixel():
    target = t4([0, 1, 2, 3, 50], (1, 1, 1, 5))
    pred = t4([0, 2, 1, 3, -50], (1, 1, 1, 5))
    mask = t4([1, 1, 1, 1, 0], (1, 1, 1, 5)).bool()
    assert float(gradient_matching(pred, target, mask, scales=1)) == pytest.approx(1.0, abs=1e-6)


def test_masked_downsample_averages_valid_pixels_and_needs_half_support():
    target = t4([1, 3, 5, 100], (1, 1, 2, 2))
    t, m = masked_downsample(target, t4([1, 1, 1, 0], (1, 1, 2, 2)).bool(), (1, 1))
    assert float(t) == pytest.approx(3.0) and bool(m)
    t, m = masked_downsample(target, t4([1, 0, 0, 0], (1, 1, 2, 2)).bool(), (1, 1))
    assert not bool(m) and float(t) == 0.0


def _output(depth: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> RefinerOutput:
    t2, _ = masked_downsample(target, mask, (depth.shape[-2] // 2, depth.shape[-1] // 2))
    t4_, _ = masked_downsample(target, mask, (depth.shape[-2] // 4, depth.shape[-1] // 4))
    omega = torch.full_like(depth, 0.5)
    return RefinerOutput(depth, 2 * t2 - 1, 0.5 * t4_ + 3, omega, omega[..., ::2, ::2], omega[..., ::4, ::4])


def test_loss_gt_is_zero_for_affine_copies_of_the_target_at_every_scale():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 16, 16, generator=g) + 0.5
    mask = torch.rand(2, 1, 16, 16, generator=g) > 0.1
    out = _output(4 * target - 2, target, mask)
    assert float(loss_gt(out, target, mask)) == pytest.approx(0.0, abs=1e-5)


def test_loss_gt_weights_the_full_and_side_terms():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(1, 1, 16, 16, generator=g)
    mask = torch.ones_like(target, dtype=torch.bool)
    depth = torch.rand(1, 1, 16, 16, generator=g)
    out = _output(depth, target, mask)
    w = LossWeights(full=1.0, side2=0.0, side4=0.0, alpha=0.5)
    expected = ssi_trimmed_mae(depth, target, mask) + 0.5 * gradient_matching(depth, target, mask)
    assert float(loss_gt(out, target, mask, w)) == pytest.approx(float(expected), rel=1e-6)
    side2 = out._replace(side2=torch.rand(1, 1, 8, 8, generator=g))
    w2 = LossWeights(full=0.0, side2=2.0, side4=0.0, alpha=0.0)
    t2, m2 = masked_downsample(target, mask, (8, 8))
    assert float(loss_gt(side2, target, mask, w2)) == pytest.approx(2 * float(ssi_trimmed_mae(side2.side2, t2, m2)), rel=1e-6)


def test_edge_guided_gradient_loss_flat_prediction_leaves_the_deviation_of_gs():
    pred = torch.zeros(1, 1, 6, 6, requires_grad=True)
    gs = torch.zeros(1, 1, 6, 6)
    gs[0, 0, 1, 2] = 4.0
    regions = torch.zeros(1, 2, 6, 6, dtype=torch.bool)
    regions[0, 0, 1:3, 1:3] = True  # G_S values 0, 4, 0, 0: mean 1, deviation (1 + 3 + 1 + 1) / 4
    loss = edge_guided_gradient_loss(pred, gs, regions)
    assert float(loss.detach()) == pytest.approx(1.5, abs=1e-5)


def test_edge_guided_gradient_loss_is_zero_after_scale_shift_and_ignores_outside_pixels():
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(1, 1, 12, 12, generator=g, requires_grad=True)
    mag = sobel_magnitude(pred).detach()
    regions = torch.zeros(1, 2, 12, 12, dtype=torch.bool)
    regions[0, 0, 2:6, 2:8] = True
    regions[0, 1, 7:11, 1:5] = True
    gs = torch.full_like(mag, 99.0)  # outside the regions: garbage
    gs = torch.where(regions[:, :1], 3 * mag + 1, gs)
    gs = torch.where(regions[:, 1:], 0.5 * mag - 2, gs)
    assert float(edge_guided_gradient_loss(pred, gs, regions).detach()) == pytest.approx(0.0, abs=1e-5)
    gs_off = gs.clone()
    gs_off[0, 0, 3, 3] += 1.0
    loss = edge_guided_gradient_loss(pred, gs_off, regions)
    assert float(loss.detach()) > 1e-3
    loss.backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0


def test_edge_guided_gradient_loss_without_regions_is_a_differentiable_zero():
    pred = torch.rand(1, 1, 8, 8, requires_grad=True)
    loss = edge_guided_gradient_loss(pred, torch.rand(1, 1, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()


def test_kmeans_is_seeded_and_separates_obvious_clusters():
    pts = torch.tensor([[0, 0], [0, 1], [1, 0], [20, 20], [20, 21], [21, 20]], dtype=torch.float32)
    labels = kmeans(pts, 2, seed=3)
    assert torch.equal(labels, kmeans(pts, 2, seed=3))
    assert len(set(labels[:3].tolist())) == 1 and len(set(labels[3:].tolist())) == 1
    assert labels[0] != labels[3]
    assert kmeans(pts[:1], 4).tolist() == [0]


def test_high_frequency_regions_are_bounding_boxes_of_edge_clusters():
    gs = torch.zeros(1, 1, 20, 20)
    gs[0, 0, 2, 2] = gs[0, 0, 3, 3] = gs[0, 0, 2, 3] = 1.0
    gs[0, 0, 15, 16] = gs[0, 0, 16, 17] = 2.0
    regions = high_frequency_regions(gs, top=0.05, k=2)
    assert regions.shape == (1, 2, 20, 20) and regions.dtype == torch.bool
    boxes = set()
    for r in regions[0]:
        ys, xs = torch.nonzero(r, as_tuple=True)
        boxes.add((int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()), int(r.sum())))
    assert boxes == {(2, 2, 3, 3, 4), (15, 16, 16, 17, 4)}


def test_high_frequency_regions_of_a_flat_map_are_empty():
    assert not bool(high_frequency_regions(torch.ones(2, 1, 8, 8), k=3).any())


def test_fusion_loss_quantile_hinge():
    gs = torch.zeros(1, 1, 8, 8)
    gs[..., :, :2] = 1.0  # edges in the two left columns
    omega2 = torch.full((1, 1, 4, 4), 0.5)
    # 1/2 scale: edge = column 0 (G_S 1), flat = columns 1-3 (G_S 0): 0.35 + 0.35
    omega4 = torch.tensor([[[[0.9, 0.1], [0.9, 0.1]]]])
    # 1/4 scale: edge = column 0 (G_S 0.5) with Omega 0.9 >= 0.85, flat = column 1 with 0.1 <= 0.15
    assert float(fusion_loss(omega2, omega4, gs)) == pytest.approx((0.7 + 0.0) / 2, abs=1e-6)
    omega4_bad = torch.tensor([[[[0.25, 0.75], [0.25, 0.75]]]])  # 0.6 + 0.6
    assert float(fusion_loss(omega2, omega4_bad, gs)) == pytest.approx((0.7 + 1.2) / 2, abs=1e-6)


def test_total_loss_stage_one_has_only_the_gt_term():
    g = torch.Generator().manual_seed(4)
    target = torch.rand(1, 1, 16, 16, generator=g)
    mask = torch.ones_like(target, dtype=torch.bool)
    out = _output(torch.rand(1, 1, 16, 16, generator=g), target, mask)
    total, parts = total_loss(out, target, mask, LossWeights(gt=2.0))
    assert set(parts) == {"gt", "total"}
    assert parts["total"] == pytest.approx(2 * float(loss_gt(out, target, mask)), rel=1e-6)
    assert float(total) == pytest.approx(parts["total"], rel=1e-6)


def test_total_loss_weights_the_three_terms():
    g = torch.Generator().manual_seed(5)
    target = torch.rand(1, 1, 16, 16, generator=g)
    mask = torch.ones_like(target, dtype=torch.bool)
    out = _output(torch.rand(1, 1, 16, 16, generator=g), target, mask)
    gs = torch.rand(1, 1, 16, 16, generator=g)
    total, parts = total_loss(out, target, mask, gs=gs)
    assert set(parts) == {"gt", "grad", "fusion", "total"}
    assert parts["grad"] > 0 and parts["fusion"] > 0
    assert parts["total"] == pytest.approx(parts["gt"] + 0.5 * parts["grad"] + 0.1 * parts["fusion"], rel=1e-6)


def test_loss_weights_reject_bad_values():
    with pytest.raises(ValueError, match="loss.grad"):
        LossWeights(grad=-1)
    with pytest.raises(ValueError, match="loss.trim"):
        LossWeights(trim=1.0)


def test_align_masked_is_exact_on_affine_data_and_ignores_invalid_pixels():
    ref = t4([0, 1, 2, 3, 4, 5], (1, 1, 2, 3))
    src = 3 * ref - 7
    src[..., 1, 2] = 1e6  # invalid
    mask = t4([1, 1, 1, 1, 1, 0], (1, 1, 2, 3)).bool()
    out = align_masked(src, ref, mask)
    torch.testing.assert_close(out[mask], ref[mask])
    flat = align_masked(torch.full_like(ref, 2.0), ref, mask)
    torch.testing.assert_close(flat, torch.full_like(ref, 2.0))


def test_selection_targets_pick_the_closest_candidate_and_its_cost():
    target = t4([0, 0, 1, 1], (1, 1, 1, 4))
    cands = torch.cat([torch.zeros_like(target), torch.ones_like(target), target], dim=1)
    mask = torch.ones_like(target, dtype=torch.bool)
    best, spread = selection_targets(cands, target, mask, window=1)
    assert best.flatten().tolist() == [0, 0, 1, 1]  # ties go to the first (LOW)
    assert spread.flatten().tolist() == [1, 1, 1, 1]
    mask[..., 0] = False
    best, spread = selection_targets(cands[:, :2], target, mask, window=1)
    assert best.flatten().tolist()[1:] == [0, 1, 1] and spread.flatten().tolist() == [0, 1, 1, 1]
    _, spread = selection_targets(cands[:, :2], target, torch.zeros_like(mask), window=3)
    assert float(spread.abs().sum()) == 0.0


def test_selection_loss_is_the_spread_weighted_cross_entropy():
    weights = torch.tensor([[0.5, 0.25], [0.5, 0.75]]).reshape(1, 2, 1, 2)
    best = torch.tensor([0, 1]).reshape(1, 1, 1, 2)
    spread = torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2)
    expect = (1 * -math.log(0.5) + 3 * -math.log(0.75)) / 4
    assert selection_loss(weights, best, spread).item() == pytest.approx(expect, rel=1e-6)
    assert selection_loss(weights, best, torch.zeros_like(spread)).item() == 0.0


def test_total_loss_adds_the_selection_term_for_a_gated_output_only_when_weighted():
    from sddr_pipeline.models import Refiner

    torch.manual_seed(0)
    low, high = torch.rand(2, 1, 32, 40), torch.rand(2, 1, 32, 40)
    refiner = Refiner.from_config("sddr-small", seed=0).train()
    out = refiner(low, high)
    assert out.candidates is not None and out.candidates.shape == out.weights.shape
    target, mask = 1 + 2 * low, torch.ones_like(low, dtype=torch.bool)
    _, parts = total_loss(out, target, mask, LossWeights())
    assert "select" not in parts
    total, parts = total_loss(out, target, mask, LossWeights(select=0.5))
    assert parts["select"] > 0 and parts["total"] == pytest.approx(parts["gt"] + 0.5 * parts["select"], rel=1e-5)
    total.backward()
    assert refiner.net.head_out.weight.grad.abs().sum() > 0
