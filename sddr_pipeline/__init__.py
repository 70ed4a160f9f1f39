"""sddr-pipeline: Self-Distilled Depth Refinement for any monocular depth predictor.

Quick start::

    import sddr_pipeline as sddr
    predictor = sddr.get_predictor("hf:depth-anything/Depth-Anything-V2-Small-hf")
    refiner = sddr.Refiner.from_pretrained("path/to/weights")
    result = sddr.refine(image, predictor, refiner)          # one-stage
    result = sddr.refine(image, predictor, refiner, mode="two-stage")

Heavy optional dependencies (ray, open3d, pycolmap, s3fs) are never imported here.
"""
from __future__ import annotations

from .lazy import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "get_predictor": "sddr_pipeline.predictors:get_predictor",
    "OutputKind": "sddr_pipeline.predictors:OutputKind",
    "SampleContext": "sddr_pipeline.predictors:SampleContext",
    "Predictor": "sddr_pipeline.predictors:Predictor",
    "Refiner": "sddr_pipeline.models:Refiner",
    "RefinerConfig": "sddr_pipeline.models:RefinerConfig",
    "refine": "sddr_pipeline.inference:refine",
    "RefineOptions": "sddr_pipeline.inference:RefineOptions",
    "TwoStageConfig": "sddr_pipeline.inference:TwoStageConfig",
    "RefineResult": "sddr_pipeline.inference:RefineResult",
    "load_depth": "sddr_pipeline.io:load_depth",
    "open_dataset": "sddr_pipeline.data:open_dataset",
    "read_image": "sddr_pipeline.data:read_image",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = ["__version__", *_LAZY]
