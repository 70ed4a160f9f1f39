"""``sddr pseudolabel``: self-distillation training shards from unlabeled images.

Per image: LOW and HIGH predictions, the coarse-to-fine refined map, its edge map G_S
and the high-frequency regions (``sddr_pipeline.distillation.make_pseudo_label``), with
the image bytes, as ``training`` shards (:mod:`sddr_pipeline.shards.schema`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sddr_pipeline.shards.schema import KIND_TRAINING

from .config import PseudoLabelPipelineConfig, load_config
from .runner import Job, PipelineReport, Progress, run_job, stderr_progress
from .stage import PseudoLabelStage


def pseudolabel_job(config: PseudoLabelPipelineConfig) -> Job:
    """The pseudo-label job of a config: its actor class and the settings a resume must keep."""
    identity = {
        "predictor": config.predictor, "weights": config.weights, "low_res": config.low_res,
        "high_res": config.high_res, "steps": config.steps, "seed": config.seed, "top": config.top,
        "regions": config.regions, "include_image": config.include_image,
    }
    kwargs = {"steps": config.steps, "seed": config.seed, "top": config.top, "regions": config.regions}
    return Job(name="pseudolabel", kind=KIND_TRAINING, stage=PseudoLabelStage, stage_kwargs=kwargs, identity=identity)


def run_pseudolabel(config: PseudoLabelPipelineConfig, progress: Progress | None = stderr_progress) -> PipelineReport:
    """Run (or resume) the pseudo-label pipeline described by ``config``."""
    return run_job(config, pseudolabel_job(config), progress)


def run_pseudolabel_pipeline(
    input: str,
    output: str,
    predictor: str,
    weights: str | None = None,
    steps: int | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    batch_size: int | None = None,
    *,
    config: str | Path | None = None,
    progress: Progress | None = stderr_progress,
    **settings: Any,
) -> PipelineReport:
    """Pseudo-label every image of ``input`` into training shards under ``output``.

    Settings as in :func:`~sddr_pipeline.pipelines.refine.run_refine_pipeline`, plus
    ``steps``, ``seed``, ``top``, ``regions`` (:class:`PseudoLabelPipelineConfig`)."""
    overrides = {"input": input, "output": output, "predictor": predictor, "weights": weights, "steps": steps,
                 "actors": actors, "gpus_per_actor": gpus_per_actor, "batch_size": batch_size, **settings}
    return run_pseudolabel(load_config(PseudoLabelPipelineConfig, config, overrides), progress)
