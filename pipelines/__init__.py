"""Ray jobs and their YAML configs, installed as ``sddr_pipeline.pipelines``.

- :func:`run_refine_pipeline`: refined depth shards (``sddr pipeline refine``)
- :func:`run_pseudolabel_pipeline`: self-distillation training shards (``sddr pseudolabel``)
- :func:`run_pointcloud_pipeline`: metric point shards (``sddr pipeline pointcloud``);
  :func:`merge_point_shards`: PLY files from them (``sddr pipeline merge``)
- :func:`add_pipeline_arguments`, :func:`add_pseudolabel_arguments`,
  :func:`add_bench_pipeline_arguments`: the CLI wiring
- ``stage``: the reusable Ray Data stages; ``configs/``: example YAML configs

Attributes are imported lazily: Ray is only imported when a pipeline runs.
"""
from __future__ import annotations

from sddr_pipeline.lazy import lazy_attributes

_LAZY = {
    "run_refine_pipeline": "refine",
    "run_refine": "refine",
    "run_pseudolabel_pipeline": "pseudolabel",
    "run_pseudolabel": "pseudolabel",
    "run_pointcloud_pipeline": "pointcloud",
    "run_pointcloud": "pointcloud",
    "merge_point_shards": "pointcloud",
    "point_accuracy": "pointcloud",
    "PointCloudPipelineConfig": "config",
    "RefinePipelineConfig": "config",
    "PseudoLabelPipelineConfig": "config",
    "RayConfig": "config",
    "ConfigError": "config",
    "load_config": "config",
    "configs_dir": "config",
    "InputError": "inputs",
    "PipelineError": "runner",
    "PipelineFailed": "runner",
    "PipelineStalled": "runner",
    "PipelineReport": "runner",
    "RefineStage": "stage",
    "PseudoLabelStage": "stage",
    "PointCloudStage": "stage",
    "add_pipeline_arguments": "cli",
    "add_pseudolabel_arguments": "cli",
    "add_bench_pipeline_arguments": "cli",
    "run_pipeline_bench": "bench",
}


__getattr__, __dir__ = lazy_attributes(__name__, {name: f".{module}" for name, module in _LAZY.items()}, globals())


__all__ = sorted(_LAZY)
