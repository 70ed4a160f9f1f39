"""``sddr pipeline refine``: refined depth for every input image, as Parquet shards.

Input: a folder/prefix of images, a local dataset folder, a list file or Parquet shards
of images (:mod:`.inputs`). Output: ``OUTPUT/shards``, ``OUTPUT/errors``,
``OUTPUT/manifest.json`` (:mod:`sddr_pipeline.shards.layout`), resumable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sddr_pipeline.shards.schema import KIND_DEPTH

from .config import RefinePipelineConfig, load_config
from .runner import Job, PipelineReport, Progress, run_job, stderr_progress
from .stage import RefineStage


def refine_job(config: RefinePipelineConfig) -> Job:
    """The refine job of a config: its actor class and the settings a resume must keep."""
    two = config.mode == "two-stage"
    identity = {
        "predictor": config.predictor, "weights": config.weights, "mode": config.mode,
        "steps": config.steps if two else None, "low_res": config.low_res, "high_res": config.high_res,
        "include_image": config.include_image, "save_predictions": config.save_predictions,
        "range_clamp": config.range_clamp,
    }
    if config.confidence:  # only when set, so outputs made before the option existed still resume
        identity["confidence"] = True
    if two and config.window_median is not None:  # likewise
        identity["window_median"] = config.window_median
    kwargs = {"mode": config.mode, "steps": config.steps, "save_predictions": config.save_predictions,
              "confidence": config.confidence, "range_clamp": config.range_clamp, "window_median": config.window_median}
    return Job(name="refine", kind=KIND_DEPTH, stage=RefineStage, stage_kwargs=kwargs, identity=identity)


def run_refine(config: RefinePipelineConfig, progress: Progress | None = stderr_progress) -> PipelineReport:
    """Run (or resume) the refine pipeline described by ``config``."""
    return run_job(config, refine_job(config), progress)


def run_refine_pipeline(
    input: str,
    output: str,
    predictor: str,
    weights: str | None = None,
    mode: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    batch_size: int | None = None,
    *,
    config: str | Path | None = None,
    progress: Progress | None = stderr_progress,
    **settings: Any,
) -> PipelineReport:
    """Refine every image of ``input`` into shards under ``output`` with Ray.

    ``config`` is an optional YAML file; the arguments and any other
    :class:`RefinePipelineConfig` field in ``settings`` (``steps``, ``low_res``,
    ``rows_per_shard``, ``storage_options``, ``ray={...}``, ...) override it (None
    values are ignored). Raises ``ConfigError`` for bad settings and ``PipelineError``
    when the job cannot finish (a rerun resumes it)."""
    overrides = {"input": input, "output": output, "predictor": predictor, "weights": weights, "mode": mode,
                 "actors": actors, "gpus_per_actor": gpus_per_actor, "batch_size": batch_size, **settings}
    return run_refine(load_config(RefinePipelineConfig, config, overrides), progress)
