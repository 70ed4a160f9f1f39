"""Two-stage (coarse-to-fine) SDDR: the one implementation of the paper's window procedure,
used for two-stage inference here and for self-distillation pseudo-labels (G_S).

Step 0 is one-stage refinement of the whole image. Step s = 1..S splits the current
estimate into (s+1)^2 overlapping windows; each window is predicted again at a working
resolution chosen from its edge density, refined against the current estimate's crop
(the consistent "low" input), aligned to that crop by least squares in the GRADIENT
domain, and the windows are blended with feathered weights into the next estimate.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ..predictors.base import Predictor, SampleContext
from .alignment import align_gradient_batch
from .edges import edge_map
from .normalize import minmax_normalize_batch, prepare_prediction_batch, resize
from .one_stage import RefinedMaps, _predict_batch, default_resolutions, finish, predict_pair, refine_predictions
from .result import RefineResult, ScaleReference
from .windows import Box, ResolutionPolicy, blend_windows, edge_density, window_boxes


@dataclass(frozen=True)
class TwoStageConfig:
    """Knobs of the coarse-to-fine procedure (defaults follow the authors' released
    inference: 2 steps; 25% window overlap; resolution policy of :class:`ResolutionPolicy`)."""

    steps: int = 2
    overlap: float = 0.25
    policy: ResolutionPolicy = ResolutionPolicy()

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 5:
            raise ValueError(f"two-stage steps must be between 1 and 5, got {self.steps}")
        if not 0.05 <= self.overlap < 0.75:
            raise ValueError(f"window overlap must be in [0.05, 0.75), got {self.overlap}")


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


def coarse_to_fine(
    image: np.ndarray,
    predictor: Predictor,
    refiner,
    start: RefinedMaps,
    high_res: int,
    context: SampleContext | None,
    config: TwoStageConfig,
    timings: dict[str, float],
) -> tuple[RefinedMaps, list[torch.Tensor]]:
    """Run steps 1..S from the one-stage estimate ``start``; returns the final maps and
    the edge maps G_0..G_S (each 1x1xHxW at working size)."""
    estimate, omega = start.refined, start.omega
    height, width = estimate.shape[-2:]
    img_size = image.shape[:2]
    base_ctx = context or SampleContext()
    history = [edge_map(estimate)]
    for step in range(1, config.steps + 1):
        g = history[-1]
        threshold = float(torch.quantile(g.flatten()[:: max(1, g.numel() // 1_000_000)].float(), config.policy.percentile / 100))
        boxes = window_boxes(height, width, step + 1, config.overlap)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, box in enumerate(boxes):
            groups[config.policy.resolution(high_res, edge_density(g, box, threshold))].append(i)
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
            out = refiner(minmax_normalize_batch(current), minmax_normalize_batch(high))
            scale, shift = align_gradient_batch(out.depth.float(), current)
            aligned = scale.view(-1, 1, 1, 1) * out.depth.float() + shift.view(-1, 1, 1, 1)
            for j, i in enumerate(idx):
                refined[i] = aligned[j, 0]
                omegas[i] = out.omega[j, 0].float()
            timings["predict_windows"] = timings.get("predict_windows", 0.0) + (t1 - t0)
            timings["refine_windows"] = timings.get("refine_windows", 0.0) + (time.perf_counter() - t1)
        feather = max(1, int(config.overlap * min(boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1])))
        estimate = blend_windows(refined, boxes, height, width, feather)[None, None]  # type: ignore[arg-type]
        omega = blend_windows(omegas, boxes, height, width, feather)[None, None]  # type: ignore[arg-type]
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
) -> RefineResult:
    """Coarse-to-fine refinement of one HxWx3 uint8 image (see the module docstring).

    ``result.edges`` is G_S and ``result.edge_history`` holds G_0..G_S (working size).
    """
    config = config or TwoStageConfig()
    low_res, high_res = default_resolutions(predictor, low_res, high_res)
    low, high, timings = predict_pair(image, predictor, low_res, high_res, context)
    t0 = time.perf_counter()
    start = refine_predictions(low, high, predictor.kind, refiner)
    timings["refine"] = time.perf_counter() - t0
    maps, history = coarse_to_fine(image, predictor, refiner, start, high_res, context, config, timings)
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
        edges=history[-1],
        edge_history=[h[0, 0].cpu().numpy() for h in history],
    )
