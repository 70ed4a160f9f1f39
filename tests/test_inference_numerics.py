"""Exact expectations for the inference numerics: normalisation, alignment, windows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sddr_pipeline.inference.alignment import (
    align_gradient_batch,
    align_least_squares,
    align_robust,
)
from sddr_pipeline.inference.normalize import (
    from_disparity_like,
    minmax_normalize,
    minmax_normalize_batch,
    resize,
    sanitize,
    to_disparity_like,
)
from sddr_pipeline.inference.windows import (
    ResolutionPolicy,
    axis_windows,
    blend_windows,
    edge_density,
    feather_weights,
    window_boxes,
)
from sddr_pipeline.predictors import OutputKind


def test_sanitize_fills_nonfinite_with_median_of_finite():
    x = np.array([[1.0, np.nan], [3.0, np.inf]], dtype=np.float32)
    out = sanitize(x)
    assert out.tolist() == [[1.0, 2.0], [3.0, 2.0]]
    assert sanitize(np.full((2, 2), np.nan)).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_to_disparity_like_inverts_depth_and_fills_holes_from_neighbours():
    d = np.array([[2.0, 4.0], [0.0, -1.0]], dtype=np.float32)
    out = to_disparity_like(d, OutputKind("depth", True))
    assert out[0, 0] == pytest.approx(0.5) and out[0, 1] == pytest.approx(0.25)
    assert out[1, 0] == pytest.approx(0.5) and out[1, 1] == pytest.approx(0.25)  # holes: nearest positive depth
    tiny = np.array([[1000.0, 1e-9]], dtype=np.float32)
    assert to_disparity_like(tiny, OutputKind("depth", True))[0, 1] == pytest.approx(1 / (1000.0 * 1e-3))
    assert not to_disparity_like(np.zeros((2, 2), np.float32), OutputKind("depth", True)).any()
    same = to_disparity_like(d, OutputKind("disparity", False))
    assert np.array_equal(same, d)


def test_from_disparity_like_round_trip():
    disp = torch.tensor([[0.5, 0.25]])
    assert torch.allclose(from_disparity_like(disp, OutputKind("depth")), torch.tensor([[2.0, 4.0]]))
    assert from_disparity_like(disp, OutputKind("disparity")) is disp


def test_minmax_normalize_exact_and_constant():
    x = torch.tensor([[2.0, 4.0], [6.0, 10.0]])
    n, lo, hi = minmax_normalize(x)
    assert (lo, hi) == (2.0, 10.0)
    assert n.tolist() == [[0.0, 0.25], [0.5, 1.0]]
    z, lo, hi = minmax_normalize(torch.full((3, 3), 7.0))
    assert torch.equal(z, torch.zeros(3, 3)) and lo == hi == 7.0


def test_minmax_normalize_batch_per_sample():
    x = torch.stack([torch.tensor([[0.0, 2.0]]), torch.tensor([[5.0, 5.0]])])[:, None]
    out = minmax_normalize_batch(x)
    assert out[0, 0].tolist() == [[0.0, 1.0]]
    assert out[1, 0].tolist() == [[0.0, 0.0]]
    assert torch.isfinite(out).all()


def test_resize_noop_and_shapes():
    x = torch.rand(1, 1, 10, 20)
    assert resize(x, (10, 20)) is x
    assert resize(x, (5, 10)).shape == (1, 1, 5, 10)
    assert resize(x, (30, 61)).shape == (1, 1, 30, 61)
    const = torch.full((1, 1, 7, 9), 3.0)
    assert torch.allclose(resize(const, (20, 31)), torch.full((1, 1, 20, 31), 3.0))


def test_least_squares_recovers_exact_affine():
    src = torch.rand(32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = align_least_squares(src, 2.5 * src - 0.75)
    assert a == pytest.approx(2.5, abs=1e-12) and b == pytest.approx(-0.75, abs=1e-12)


def test_least_squares_respects_mask_and_constant_source():
    src = torch.arange(10.0)
    ref = 3 * src + 1
    ref[0] = 1000.0
    mask = torch.ones(10, dtype=torch.bool)
    mask[0] = False
    a, b = align_least_squares(src, ref, mask)
    assert (a, b) == (pytest.approx(3.0), pytest.approx(1.0))
    a, b = align_least_squares(torch.full((4,), 2.0), torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert (a, b) == (1.0, pytest.approx(1.0))


def test_robust_fit_ignores_outliers():
    g = torch.Generator().manual_seed(1)
    src = torch.rand(2000, generator=g)
    ref = 0.5 * src + 2.0
    ref[:100] += 50 * torch.rand(100, generator=g)  # 5% wild points
    a_ls, _ = align_least_squares(src, ref)
    a, b = align_robust(src, ref)
    assert abs(a_ls - 0.5) > 0.1  # plain least squares is dragged
    assert a == pytest.approx(0.5, abs=1e-3) and b == pytest.approx(2.0, abs=1e-3)


def test_gradient_alignment_matches_gradients_not_values():
    g = torch.Generator().manual_seed(2)
    src = torch.rand(1, 1, 40, 40, generator=g, dtype=torch.float64)
    scale, shift = align_gradient_batch(src, 3.0 * src + 5.0)
    assert scale.item() == pytest.approx(3.0, abs=1e-12) and shift.item() == pytest.approx(5.0, abs=1e-12)
    # a smooth bias in ref (a low-frequency ramp) barely changes the gradient fit's scale
    ramp = torch.linspace(0, 0.01, 40, dtype=torch.float64)[None, :].expand(40, 40)
    scale2, _ = align_gradient_batch(src, 3.0 * src + ramp)
    assert scale2.item() == pytest.approx(3.0, abs=0.01)


def test_gradient_alignment_falls_back_to_values_per_sample():
    g = torch.Generator().manual_seed(4)
    src = torch.rand(4, 1, 16, 20, generator=g, dtype=torch.float64)
    src[3] = 2.0  # flat: no gradient, no variance
    ref = torch.stack([2 * src[0] + 1, -1 * src[1], src[2] * 0 + 4.0, torch.rand(1, 16, 20, generator=g, dtype=torch.float64)])
    scale, shift = align_gradient_batch(src, ref)
    assert scale[0].item() == pytest.approx(2.0) and shift[0].item() == pytest.approx(1.0)
    # non-positive gradient fits fall back to value least squares: -1 for a flipped map, 0 for a flat ref
    for i in (1, 2):
        a, b = align_least_squares(src[i], ref[i])
        assert scale[i].item() == pytest.approx(a, abs=1e-9) and shift[i].item() == pytest.approx(b, abs=1e-9)
    assert scale[1].item() == pytest.approx(-1.0) and scale[2].item() == pytest.approx(0.0, abs=1e-12)
    assert scale[3].item() == 1.0 and shift[3].item() == pytest.approx(float(ref[3].mean()) - 2.0)
    # each sample's fit is its own: a batch of one gives the same numbers
    for i in range(4):
        one = align_gradient_batch(src[i : i + 1], ref[i : i + 1])
        assert one[0].item() == pytest.approx(scale[i].item(), abs=1e-12)
        assert one[1].item() == pytest.approx(shift[i].item(), abs=1e-12)


def test_axis_windows_exact_layout():
    assert axis_windows(100, 1, 0.25) == [(0, 100)]
    assert axis_windows(100, 2, 0.25) == [(0, 58), (42, 100)]
    assert axis_windows(100, 3, 0.25) == [(0, 40), (30, 70), (60, 100)]
    for n in (2, 3, 4):
        w = axis_windows(97, n, 0.25)
        assert w[0][0] == 0 and w[-1][1] == 97
        sizes = {b - a for a, b in w}
        assert len(sizes) == 1
        for (a0, a1), (b0, b1) in zip(w, w[1:]):
            assert b0 < a1  # neighbours overlap


def test_window_boxes_count_and_cover():
    boxes = window_boxes(60, 80, 3)
    assert len(boxes) == 9
    cover = np.zeros((60, 80), int)
    for y0, x0, y1, x1 in boxes:
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1


def test_feather_weights_ramp_only_inside_image():
    w = feather_weights((0, 10, 20, 30), 20, 40, feather=4)
    assert w.shape == (20, 20)
    assert torch.all(w[:, 10] == 1.0)  # column 10 of the window = image column 20, not near an inner side
    assert w[5, 0].item() == pytest.approx(0.5 / 4)  # left side is inside the image: ramps
    assert w[5, 19].item() == pytest.approx(0.5 / 4)  # right side (x1=30 < 40) ramps too
    assert torch.all(w[0, 4:16] == 1.0)  # top side is the image border: no ramp


def test_blend_constant_maps_is_exact_and_partition_of_unity():
    boxes = window_boxes(50, 70, 3)
    maps = [torch.full((b[2] - b[0], b[3] - b[1]), 4.25) for b in boxes]
    out = blend_windows(maps, boxes, 50, 70, feather=5)
    assert torch.allclose(out, torch.full((50, 70), 4.25), atol=1e-6)
    # a linear ramp seen identically by every window is reproduced exactly
    ramp = torch.arange(70.0)[None, :].expand(50, 70)
    maps = [ramp[b[0]:b[2], b[1]:b[3]] for b in boxes]
    assert torch.allclose(blend_windows(maps, boxes, 50, 70, feather=5), ramp, atol=1e-4)


def test_edge_density_and_resolution_policy():
    edges = torch.zeros(1, 1, 10, 10)
    edges[..., :5, :] = 1.0
    assert edge_density(edges, (0, 0, 10, 10), 0.5) == 0.5
    assert edge_density(edges, (5, 0, 10, 10), 0.5) == 0.0
    pol = ResolutionPolicy()
    assert pol.resolution(1024, 0.06) == 1024  # average density -> base
    assert pol.resolution(1024, 0.0) == 768  # flat -> lo x base
    assert pol.resolution(1024, 1.0) == 1280  # dense -> hi x base


def test_denormalize_like_inverts_the_window_normalisation_exactly():
    from sddr_pipeline.inference.normalize import minmax_normalize_batch
    from sddr_pipeline.inference.two_stage import denormalize_like

    ref = torch.rand(3, 1, 20, 30, generator=torch.Generator().manual_seed(0)) * 5 + 2
    torch.testing.assert_close(denormalize_like(minmax_normalize_batch(ref), ref), ref, atol=1e-5, rtol=0)


def test_untextured_window_keeps_steps_and_identity_and_drops_thin_texture():
    from sddr_pipeline.inference.options import TwoStageConfig
    from sddr_pipeline.inference.two_stage import untextured_window

    step = torch.zeros(1, 1, 32, 32)
    step[..., 16:] = 1.0
    texture = torch.zeros(1, 1, 32, 32)
    texture[..., 2::4, :] = 0.3  # one-pixel lines across the step: thin texture
    low = torch.cat([0.25 + 0.5 * step, step])  # LOW has a weaker step / the same one
    high = torch.cat([step + texture, step])
    out = untextured_window(low, high, 7)
    # the texture lines are gone: every column is constant, as in LOW
    assert float((out[0] - out[0].mean(dim=-2, keepdim=True)).abs().max()) < 1e-6
    assert float((high[0] - high[0].mean(dim=-2, keepdim=True)).abs().max()) > 0.2
    # HIGH's step (after its least-squares alignment to LOW) passes unchanged
    from sddr_pipeline.models.fusion import align_to

    aligned = align_to(high[:1], low[:1]).mean(dim=-2)
    assert abs(float(out[0, 0, 0, 20] - out[0, 0, 0, 10]) - float(aligned[0, 0, 20] - aligned[0, 0, 10])) < 1e-5
    # where HIGH equals LOW the window's HIGH is LOW
    torch.testing.assert_close(out[1], low[1], atol=1e-6, rtol=0)
    assert torch.equal(untextured_window(low, high, 1), high)
    assert TwoStageConfig().window_median == 7
    for bad in (0, 4, 17, True, 3.0):
        with pytest.raises(ValueError, match="window_median"):
            TwoStageConfig(window_median=bad)
