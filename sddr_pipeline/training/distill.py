"""Self-distillation rounds: pseudo-labels G_S for training crops, made by the model itself.

Each ``distill`` stage of a training config is one round. At the round's first step
``s0`` the trainer freezes a teacher (the current weights, saved to
``OUTPUT/distill/round-XXXXXX.safetensors``) and labels the round's pool: examples
``s0*B ... s0*B+N-1`` (their usual indices, so each is a pure function of (seed, index)).
An example's pseudo-label treats its crop as the image:

* D_0 = teacher(low, high) on the crop (one-stage refinement of the crop's maps);
* steps 1..S of :func:`~sddr_pipeline.inference.two_stage.coarse_to_fine` (the project's one
  window procedure): each window of the crop is predicted again by the example's
  predictor from the crop's RGB pixels with ``SampleContext.cropped`` (the simulated
  predictor then draws fresh window noise), refined against the current estimate, aligned
  and blended;
* G_S = the edge map of the result, and its edge clusters (top ``top`` of G_S grouped by
  k-means, :func:`~sddr_pipeline.training.losses.edge_clusters`), whose bounding boxes are
  the regions of L_grad.

Step ``s0 + t`` trains on pool items ``(t*B + j) mod N`` with L_gt + grad * L_grad +
fusion * L_fusion. Labels are made on one thread without touching torch's global RNG, so
they are a pure function of (teacher weights, examples, settings): a run resumed inside a
round reloads the round's teacher and gets bitwise the same labels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ..inference.one_stage import RefinedMaps
from ..inference.two_stage import TwoStageConfig, coarse_to_fine
from ..models import Refiner
from .config import DistillSettings, Stage
from .losses import cluster_boxes, edge_clusters
from .samples import Batch, ExampleSource, TrainingExample, single_thread


@dataclass(frozen=True)
class CropLabel:
    """A training crop's pseudo-label: ``gs`` 1xHxW float32 (G_S) and ``clusters`` 1xHxW
    int8 (edge cluster of each top-share pixel of G_S, -1 elsewhere)."""

    gs: torch.Tensor
    clusters: torch.Tensor


@dataclass(frozen=True)
class RoundPool:
    """The labelled examples of one round starting at step ``start``."""

    start: int
    examples: tuple[TrainingExample, ...]
    labels: tuple[CropLabel, ...]
    regions: int
    seconds: float

    def batch(self, step: int, batch_size: int) -> Batch:
        """The batch of 0-based global ``step``: pool items ``(t*B + j) mod N``, t = step - start."""
        n = len(self.examples)
        t = step - self.start
        idx = [(t * batch_size + j) % n for j in range(batch_size)]
        ex = [self.examples[i] for i in idx]
        clusters = torch.stack([self.labels[i].clusters for i in idx]).long()
        return Batch(
            torch.stack([e.low for e in ex]),
            torch.stack([e.high for e in ex]),
            torch.stack([e.target for e in ex]),
            torch.stack([e.mask for e in ex]),
            tuple(e.name for e in ex),
            gs=torch.stack([self.labels[i].gs for i in idx]),
            regions=cluster_boxes(clusters, self.regions),
        )


def round_start(stages: Sequence[Stage], step: int) -> int:
    """First step of the stage that 0-based ``step`` belongs to."""
    begin = 0
    for stage in stages:
        if step < begin + stage.steps:
            return begin
        begin += stage.steps
    return begin - stages[-1].steps


def pool_indices(start: int, batch_size: int, round_steps: int, settings: DistillSettings) -> range:
    """Example indices of the pool of a round starting at ``start`` with ``round_steps`` steps."""
    size = settings.pool or round_steps * batch_size
    return range(start * batch_size, start * batch_size + size)


def crop_pseudo_label(
    example: TrainingExample, teacher: Refiner, config: TwoStageConfig, *, top: float, regions: int, seed: int
) -> CropLabel:
    """G_S and its edge clusters for one example with an origin (see the module docstring)."""
    origin = example.origin
    if origin is None:
        raise ValueError(f"example {example.name!r} has no crop origin; make it with origin=True")
    device = teacher.device
    low, high = example.low[None].to(device), example.high[None].to(device)
    out = teacher(low, high)
    start = RefinedMaps(out.depth.float(), out.omega.float(), low, high)
    _, history = coarse_to_fine(
        origin.image, origin.predictor, teacher, start, origin.high_res, origin.context, config, {}, True
    )
    gs = history[-1][0].float().cpu()
    clusters = edge_clusters(gs[None], top=top, k=regions, seed=seed)[0].to(torch.int8)
    return CropLabel(gs, clusters)


def make_pool(
    source: ExampleSource, teacher: Refiner, start: int, indices: Sequence[int], settings: DistillSettings
) -> RoundPool:
    """Label the examples ``indices`` with ``teacher`` (eval mode, one thread, global RNG
    untouched); origins are dropped once used, to keep the pool small."""
    t0 = time.perf_counter()
    config = TwoStageConfig(steps=settings.coarse_to_fine_steps)
    teacher.eval()
    examples: list[TrainingExample] = []
    labels: list[CropLabel] = []
    with single_thread(), torch.random.fork_rng(devices=[]):
        for index in indices:
            example = source.example(index, origin=True)
            labels.append(crop_pseudo_label(
                example, teacher, config, top=settings.top, regions=settings.regions, seed=index
            ))
            examples.append(replace(example, origin=None))
    return RoundPool(start, tuple(examples), tuple(labels), settings.regions, time.perf_counter() - t0)
