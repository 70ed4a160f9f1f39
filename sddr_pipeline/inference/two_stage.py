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
from dataclasses import dataclass

import numpy as np
import torch

from ..predictors.base import Predictor, SampleContext
from .alignment import align_gradient_batch, gaussian_blur
from .edges import edge_map
from .normalize import minmax_normalize_batch, prepare_prediction_batch, resize
from .one_stage import RefinedMaps, _predict_batch, default_resolutions, finish, predict_pair, refine_predictions
from .range_clamp import RANGE_CLAMP, check_range_clamp, clamp_radius, clamp_to_local_range
from .result import RefineResult, ScaleReference
from .windows import Box, ResolutionPolicy, blend_windows, edge_density, window_boxes


@dataclass(frozen=True)
class TwoStageConfig:
    """Knobs of the coarse-to-fine procedure (defaults follow the authors' released
    inference: 2 steps; 25% window overlap; resolution policy of :class:`ResolutionPolicy`).

    ``window_net_scale`` bounds the network's long side on a window of step s to
    ``max_side * window_net_scale / (s + 1)`` (rounded to 128, at least 128): each step
    then costs about ``window_net_scale**2`` one-stage passes instead of ``(s+1)**2``,
    while the window's own high-resolution prediction still guides the upsampling to
    the window's full size. ``None`` runs every window at the preset's ``max_side``.
    The window-resolution policy reads edge maps computed at ``policy_side`` px (long
    side) at most: densities need no more, and G at full size is computed once, at the end.
    A gated refiner's window output is brought back to the estimate's units exactly, by
    inverting the min-max normalisation of its estimate crop (:func:`denormalize_like`):
    it is a mix of that crop and detail aligned to it, so a fit can only add error (the
    fit's scale errors were why windows made two-stage worse than one-stage). The two
    settings below apply to the legacy residual refiner only:
    windows are aligned in the gradient domain after a Gaussian blur of ``align_sigma``
    x the window's long side on both maps (see :func:`align_gradient_batch`).
    ``anchor_sigma`` > 0 (an extension of the paper; 0 disables it) additionally keeps
    the current estimate's low frequencies in each window: the window contributes only
    its detail above a Gaussian of ``anchor_sigma`` x the window's long side. On
    middlebury2014q with the simulated predictor it kept two-stage's ORD and REL at the
    one-stage level while improving D3R (measured while choosing the defaults).
    ``range_clamp`` (fraction of the working long side; 0 disables it) limits every
    window's aligned result to the local range of the current estimate, as one-stage
    limits its result to LOW's (:mod:`.range_clamp`).
    """

    steps: int = 2
    overlap: float = 0.25
    policy: ResolutionPolicy = ResolutionPolicy()
    window_net_scale: float | None = 1.5
    policy_side: int = 512
    align_sigma: float = 0.03
    anchor_sigma: float = 0.05
    range_clamp: float = RANGE_CLAMP

    def __post_init__(self) -> None:
        check_range_clamp(self.range_clamp)
        if not 1 <= self.steps <= 5:
            raise ValueError(f"two-stage steps must be between 1 and 5, got {self.steps}")
        if not 0.05 <= self.overlap < 0.75:
            raise ValueError(f"window overlap must be in [0.05, 0.75), got {self.overlap}")
        if self.window_net_scale is not None and not 0.25 <= self.window_net_scale <= 4:
            raise ValueError(f"window_net_scale must be in [0.25, 4] or None, got {self.window_net_scale}")

    def window_max_side(self, preset_max_side: int, step: int) -> int | None:
        """The network's long-side bound for the windows of ``step`` (see the class doc)."""
        if self.window_net_scale is None:
            return None
        side = preset_max_side * self.window_net_scale / (step + 1)
        return int(min(preset_max_side, max(128, round(side / 128) * 128)))


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


def _align_residual_windows(depth: torch.Tensor, current: torch.Tensor, config: "TwoStageConfig", side: int) -> torch.Tensor:
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
    high_res: int,
    context: SampleContext | None,
    config: TwoStageConfig,
    timings: dict[str, float],
    final_edges: bool = True,
) -> tuple[RefinedMaps, list[torch.Tensor]]:
    """Run steps 1..S from the one-stage estimate ``start``; returns the final maps and
    the edge maps G_0..G_S (G_0..G_{S-1} at the policy's reduced size, G_S at working
    size; G_S only with ``final_edges``)."""
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
            preds = _predict_batch(predictor, crops, res, ctxs)
            t1 = time.perf_counter()
            bh, bw = boxes[idx[0]][2] - boxes[idx[0]][0], boxes[idx[0]][3] - boxes[idx[0]][1]
            high = torch.cat([resize(p, (bh, bw)) for p in prepare_prediction_batch(preds, predictor.kind, estimate.device)])
            current = torch.cat([estimate[..., y0:y1, x0:x1] for (y0, x0, y1, x1) in (boxes[i] for i in idx)])
            out = refiner(minmax_normalize_batch(current), minmax_normalize_batch(high), max_side=net_side)
            if getattr(refiner.config, "fusion", "residual") == "gated":
                aligned = denormalize_like(out.depth.float(), current)
            else:
                aligned = _align_residual_windows(out.depth.float(), current, config, max(bh, bw))
            aligned = clamp_to_local_range(aligned, current, clamp_radius((height, width), config.range_clamp))
            for j, i in enumerate(idx):
                refined[i] = aligned[j, 0]
                omegas[i] = out.omega[j, 0].float()
            timings["predict_windows"] = timings.get("predict_windows", 0.0) + (t1 - t0)
            timings["refine_windows"] = timings.get("refine_windows", 0.0) + (time.perf_counter() - t1)
        feather = max(1, int(config.overlap * min(boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1])))
        estimate = blend_windows(refined, boxes, height, width, feather)[None, None]  # type: ignore[arg-type]
        omega = blend_windows(omegas, boxes, height, width, feather)[None, None]  # type: ignore[arg-type]
    if final_edges:
        history.append(edge_map(estimate))
    return RefinedMaps(estimate, omega, start.low_disp, start.high_disp), history


def refine_two_stage(
    image: np.ndarray,
    predictor: Predictor,
    refiner,
    *,
    low_res: int | None = None,
    high_res: int | None = None,
    context: SampleContext | None = None,
    scale_reference: ScaleReference | None = None,
    config: TwoStageConfig | None = None,
    edges: bool = True,
) -> RefineResult:
    """Coarse-to-fine refinement of one HxWx3 uint8 image (see the module docstring).

    ``result.edges`` is G_S (at image size) and ``result.edge_history`` holds G_0..G_S
    (the earlier ones at the window policy's reduced size); ``edges=False`` skips the
    full-size G_S (``result.edges`` is then None).
    """
    config = config or TwoStageConfig()
    low_res, high_res = default_resolutions(predictor, low_res, high_res)
    low, high, timings = predict_pair(image, predictor, low_res, high_res, context)
    t0 = time.perf_counter()
    start = refine_predictions(low, high, predictor.kind, refiner, config.range_clamp)
    timings["refine"] = time.perf_counter() - t0
    maps, history = coarse_to_fine(image, predictor, refiner, start, high_res, context, config, timings, edges)
    return finish(
        maps,
        predictor.kind,
        image.shape[:2],
        low,
        high,
        "two-stage",
        config.steps,
        timings,
        scale_reference,
        edges=history[-1] if edges else None,
        edge_history=[h[0, 0].cpu().numpy() for h in history],
        want_edges=edges,
    )
