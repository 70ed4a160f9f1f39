"""Two-stage (coarse-to-fine) SDDR: the one implementation of the paper's window procedure,
used for two-stage inference here and for self-distillation pseudo-labels (G_S).

Step 0 is one-stage refinement of the whole image. Step s = 1..S splits the current
estimate into (s+1)^2 overlapping windows; each window is predicted again at a working
resolution chosen from its edge density, refined against the current estimate's crop
(the consistent "low" input), brought back to that crop's units (gated refiner: exactly,
by inverting the crop's normalisation; legacy residual refiner: least squares in the
GRADIENT domain), and the windows are blended with feathered weights into the next estimate.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np
import torch

from ..models.fusion import align_to, median_blur
from ..predictors.base import Predictor, SampleContext
from .alignment import align_gradient_batch, gaussian_blur
from .core import RefinedMaps, finish, predict_pair, predict_windows, refine_predictions
from .edges import edge_map
from .normalize import minmax_normalize_batch, prepare_prediction_batch, resize
from .options import RefineOptions, TwoStageConfig
from .range_clamp import clamp_radius, clamp_to_local_range
from .result import RefineResult, ScaleReference
from .windows import Box, blend_windows, edge_density, window_boxes


def _image_box(box: Box, work: tuple[int, int], image: tuple[int, int]) -> Box:
    """A working-size box mapped to full-image pixels."""
    sy, sx = image[0] / work[0], image[1] / work[1]
    y0, x0, y1, x1 = box
    return (
        int(round(y0 * sy)),
        int(round(x0 * sx)),
        max(int(round(y1 * sy)), int(round(y0 * sy)) + 1),
        max(int(round(x1 * sx)), int(round(x0 * sx)) + 1),
    )


def denormalize_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Invert the per-sample min-max normalisation of ``reference`` (Bx1xHxW) on ``x``:
    a gated window's output, a mix of its normalised estimate crop and detail aligned to
    it, is thereby in the estimate's units exactly, with no fit."""
    flat = reference.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return x * (hi - lo) + lo


def untextured_window(low: torch.Tensor, high: torch.Tensor, kernel: int) -> torch.Tensor:
    """``low`` + the ``kernel`` x ``kernel`` median of (``high`` least-squares aligned to
    ``low``) - ``low``, per sample (Bx1xHxW, one window at a time): a window's HIGH
    without the thin RGB texture a fresh prediction copies (see
    :attr:`TwoStageConfig.window_median`); ``kernel`` 1 returns ``high``."""
    if kernel <= 1:
        return high
    return torch.cat([lo + median_blur(align_to(hi, lo) - lo, kernel) for lo, hi in zip(low.split(1), high.split(1))])


def _align_residual_windows(depth: torch.Tensor, current: torch.Tensor, config: TwoStageConfig, side: int) -> torch.Tensor:
    """Residual-head windows: gradient-domain least squares to the estimate crop, then the
    anchor (the crop's low frequencies replace the window's)."""
    scale, shift = align_gradient_batch(depth, current, sigma=config.align_sigma * side)
    aligned = scale.view(-1, 1, 1, 1) * depth + shift.view(-1, 1, 1, 1)
    if config.anchor_sigma > 0:
        sig = config.anchor_sigma * side
        aligned = aligned - gaussian_blur(aligned, sig) + gaussian_blur(current, sig)
    return aligned


def policy_edges(estimate: torch.Tensor, side: int) -> torch.Tensor:
    """Edge map G of the estimate at most ``side`` px on its long side (for densities)."""
    h, w = estimate.shape[-2:]
    scale = min(1.0, side / max(h, w))
    small = resize(estimate, (max(1, round(h * scale)), max(1, round(w * scale))))
    return edge_map(small)


def coarse_to_fine(
    image: np.ndarray,
    predictor: Predictor,
    refiner,
    start: RefinedMaps,
    options: RefineOptions,
    context: SampleContext | None,
    timings: dict[str, float],
) -> tuple[RefinedMaps, list[torch.Tensor]]:
    """Run steps 1..S (``options.two_stage``) from the one-stage estimate ``start``;
    returns the final maps and the edge maps G_0..G_S (G_0..G_{S-1} at the policy's
    reduced size, G_S at working size; G_S only with ``options.edges``)."""
    config, high_res = options.two_stage, options.high_res
    estimate, omega = start.refined, start.omega
    height, width = estimate.shape[-2:]
    img_size = image.shape[:2]
    base_ctx = context or SampleContext()
    history: list[torch.Tensor] = []
    for step in range(1, config.steps + 1):
        g = policy_edges(estimate, config.policy_side)
        history.append(g)
        threshold = float(torch.quantile(g.flatten().float(), config.policy.percentile / 100))
        scale_y, scale_x = g.shape[-2] / height, g.shape[-1] / width
        boxes = window_boxes(height, width, step + 1, config.overlap)
        net_side = config.window_max_side(refiner.config.max_side, step)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, box in enumerate(boxes):
            gy0, gx0 = int(box[0] * scale_y), int(box[1] * scale_x)
            gbox = (gy0, gx0, max(math.ceil(box[2] * scale_y), gy0 + 1), max(math.ceil(box[3] * scale_x), gx0 + 1))
            groups[config.policy.resolution(high_res, edge_density(g, gbox, threshold))].append(i)
        refined: list[torch.Tensor | None] = [None] * len(boxes)
        omegas: list[torch.Tensor | None] = [None] * len(boxes)
        for res, idx in sorted(groups.items()):
            t0 = time.perf_counter()
            ibox = [_image_box(boxes[i], (height, width), img_size) for i in idx]
            crops = [np.ascontiguousarray(image[y0:y1, x0:x1]) for (y0, x0, y1, x1) in ibox]
            ctxs = [base_ctx.cropped(b) for b in ibox]
            preds = predict_windows(predictor, crops, res, ctxs)
            t1 = time.perf_counter()
            bh, bw = boxes[idx[0]][2] - boxes[idx[0]][0], boxes[idx[0]][3] - boxes[idx[0]][1]
            high = torch.cat([resize(p, (bh, bw)) for p in prepare_prediction_batch(preds, predictor.kind, estimate.device)])
            current = torch.cat([estimate[..., y0:y1, x0:x1] for (y0, x0, y1, x1) in (boxes[i] for i in idx)])
            gated = getattr(refiner.config, "fusion", "residual") == "gated"
            low_n, high_n = minmax_normalize_batch(current), minmax_normalize_batch(high)
            if gated:
                high_n = untextured_window(low_n, high_n, config.window_median)
            out = refiner(low_n, high_n, max_side=net_side)
            if gated:
                aligned = denormalize_like(out.depth.float(), current)
            else:
                aligned = _align_residual_windows(out.depth.float(), current, config, max(bh, bw))
            aligned = clamp_to_local_range(aligned, current, clamp_radius((height, width), options.range_clamp))
            for j, i in enumerate(idx):
                refined[i] = aligned[j, 0]
                omegas[i] = out.omega[j, 0].float()
            timings["predict_windows"] = timings.get("predict_windows", 0.0) + (t1 - t0)
            timings["refine_windows"] = timings.get("refine_windows", 0.0) + (time.perf_counter() - t1)
        feather = max(1, int(config.overlap * min(boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1])))
        estimate = blend_windows(refined, boxes, height, width, feather)[None, None]  # type: ignore[arg-type]
        omega = blend_windows(omegas, boxes, height, width, feather)[None, None]  # type: ignore[arg-type]
    if options.edges:
        history.append(edge_map(estimate))
    return RefinedMaps(estimate, omega, start.low_disp, start.high_disp), history


def refine_two_stage(
    image: np.ndarray,
    predictor: Predictor,
    refiner,
    options: RefineOptions,
    *,
    context: SampleContext | None = None,
    scale_reference: ScaleReference | None = None,
) -> RefineResult:
    """Coarse-to-fine refinement of one HxWx3 uint8 image (see the module docstring).

    ``options`` must be resolved (:meth:`RefineOptions.resolved`); use
    :func:`sddr_pipeline.inference.refine`, which resolves them. ``result.edges`` is G_S
    (at image size) and ``result.edge_history`` holds G_0..G_S (the earlier ones at the
    window policy's reduced size); without ``options.edges`` the full-size G_S is skipped
    (``result.edges`` is then None). With ``options.keep_one_stage`` the result also
    carries the step-0 (one-stage) result as ``result.one_stage``.
    """
    low, high, timings = predict_pair(image, predictor, options.low_res, options.high_res, context)
    t0 = time.perf_counter()
    start = refine_predictions(low, high, predictor.kind, refiner, options.range_clamp)
    timings["refine"] = time.perf_counter() - t0
    one_stage = None
    if options.keep_one_stage:
        step0 = replace(options, mode="one-stage", edges=False, confidence=False, keep_one_stage=False)
        one_stage = finish(start, predictor.kind, image.shape[:2], low, high, step0, dict(timings), scale_reference)
    t1 = time.perf_counter()
    maps, history = coarse_to_fine(image, predictor, refiner, start, options, context, timings)
    timings["two_stage"] = time.perf_counter() - t1
    result = finish(
        maps,
        predictor.kind,
        image.shape[:2],
        low,
        high,
        options,
        timings,
        scale_reference,
        edges=history[-1] if options.edges else None,
        edge_history=[h[0, 0].cpu().numpy() for h in history],
    )
    result.one_stage = one_stage
    return result
