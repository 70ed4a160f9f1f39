"""Self-distillation rounds: pseudo-labels G_S for training crops, made by the model itself.

Each ``distill`` stage of a training config is one round. At the round's first step
``s0`` the trainer freezes a teacher, the current weights (saved to
``OUTPUT/distill/round-XXXXXX.safetensors``). The round's pool is examples
``s0*B ... s0*B+N-1`` (their usual indices, so each is a pure function of (seed, index));
step ``s0 + t`` trains on pool items ``(t*B + j) mod N`` with L_gt + grad * L_grad +
fusion * L_fusion. An item's pseudo-label is made by the teacher when a step first needs
it (kept for later steps only when the pool is reused, N < steps * B), so labelling is
spread over the round's steps and checkpoints keep their cadence; every label still
comes from the model as it was at the round's start, as if all were made then.

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

Examples from training shards (``kind: shards``) already carry a pseudo-label: the G_S
that ``sddr pseudolabel`` stored, cut with the example's box (``TrainingExample.gs``). A
round uses it as is, without running the teacher, unless the round's stage sets
``relabel_shards`` (then the teacher labels the crop from the row's stored image, as
above; this needs the real predictor that made the shards). Either way the crop's
high-frequency regions are recomputed from the crop's G_S (top ``top`` share, ``regions``
k-means clusters seeded by the example index, their bounding boxes) rather than cut out
of the stored image-level regions: a crop holds an arbitrary share of the image's edge
pixels and slivers of its clusters, and recomputing keeps stored and teacher labels
defined the same way.

Labels are made on one thread without touching torch's global RNG, so they are a pure
function of (teacher weights, example, settings): a run resumed inside a round reloads
the round's teacher and gets bitwise the same labels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ..inference.core import RefinedMaps
from ..inference.options import RefineOptions, TwoStageConfig
from ..inference.two_stage import coarse_to_fine
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


def stored_pseudo_label(example: TrainingExample, *, top: float, regions: int, seed: int) -> CropLabel:
    """The pseudo-label of an example that carries a stored G_S (a training-shard row):
    that G_S and the edge clusters of the crop (see the module docstring)."""
    if example.gs is None:
        raise ValueError(f"example {example.name!r} has no stored G_S")
    gs = example.gs.float()
    clusters = edge_clusters(gs[None], top=top, k=regions, seed=seed)[0].to(torch.int8)
    return CropLabel(gs, clusters)


def crop_pseudo_label(
    example: TrainingExample, teacher: Refiner, options: RefineOptions, *, top: float, regions: int, seed: int
) -> CropLabel:
    """G_S and its edge clusters for one example with an origin (see the module docstring);
    ``options`` give the coarse-to-fine steps and the windows' range clamp (the working
    resolution is the example's own)."""
    origin = example.origin
    if origin is None:
        raise ValueError(f"example {example.name!r} has no crop origin; make it with origin=True")
    device = teacher.device
    low, high = example.low[None].to(device), example.high[None].to(device)
    out = teacher(low, high)
    start = RefinedMaps(out.depth.float(), out.omega.float(), low, high)
    options = replace(options, mode="two-stage", high_res=origin.high_res, low_res=None, edges=True,
                      range_clamp=options.clamp_for(teacher))
    _, history = coarse_to_fine(origin.image, origin.predictor, teacher, start, options, origin.context, {})
    gs = history[-1][0].float().cpu()
    clusters = edge_clusters(gs[None], top=top, k=regions, seed=seed)[0].to(torch.int8)
    return CropLabel(gs, clusters)


class DistillRound:
    """One self-distillation round: a frozen ``teacher``, the pool of example indices and
    the pseudo-labels made so far (see the module docstring)."""

    def __init__(
        self, source: ExampleSource, teacher: Refiner, start: int, steps: int, batch_size: int,
        settings: DistillSettings, relabel_shards: bool = False,
    ) -> None:
        self.source = source
        self.relabel_shards = relabel_shards
        self.teacher = teacher.eval()
        self.start = start
        self.settings = settings
        self.indices = pool_indices(start, batch_size, steps, settings)
        self.reused = len(self.indices) < steps * batch_size
        self.options = RefineOptions(mode="two-stage", two_stage=TwoStageConfig(steps=settings.coarse_to_fine_steps),
                                     range_clamp=settings.range_clamp)
        self.labelled = 0
        self.stored = 0
        self.label_seconds = 0.0
        self._cache: dict[int, tuple[TrainingExample, CropLabel]] = {}

    def item(self, position: int) -> tuple[TrainingExample, CropLabel]:
        """Pool item ``position``: the example (without its origin) and its pseudo-label."""
        if position in self._cache:
            return self._cache[position]
        t0 = time.perf_counter()
        index = self.indices[position]
        stored = not self.relabel_shards and self.source.kind_of(index) == "shards"
        top, regions = self.settings.top, self.settings.regions
        with single_thread(), torch.random.fork_rng(devices=[]):
            example = self.source.example(index, origin=not stored)
            if stored:
                label = stored_pseudo_label(example, top=top, regions=regions, seed=index)
            else:
                label = crop_pseudo_label(example, self.teacher, self.options, top=top, regions=regions, seed=index)
        made = (replace(example, origin=None), label)
        if self.reused:
            self._cache[position] = made
        if stored:
            self.stored += 1
        else:
            self.labelled += 1
            self.label_seconds += time.perf_counter() - t0
        return made

    def batch(self, step: int, batch_size: int) -> Batch:
        """The batch of 0-based global ``step``: pool items ``(t*B + j) mod N``, t = step - start."""
        n = len(self.indices)
        t = step - self.start
        items = [self.item((t * batch_size + j) % n) for j in range(batch_size)]
        clusters = torch.stack([label.clusters for _, label in items]).long()
        return Batch(
            torch.stack([e.low for e, _ in items]),
            torch.stack([e.high for e, _ in items]),
            torch.stack([e.target for e, _ in items]),
            torch.stack([e.mask for e, _ in items]),
            tuple(e.name for e, _ in items),
            gs=torch.stack([label.gs for _, label in items]),
            regions=cluster_boxes(clusters, self.settings.regions),
        )
