"""Helpers the Ray-stage tests load by file path (``python:<this file>:depth``), also in
Ray workers: a ground-truth-free depth model and a map_batches probe of the GPU an actor got."""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def depth(image: np.ndarray) -> np.ndarray:
    """A smooth relative disparity from the image's grey level and a left-right ramp."""
    grey = image.astype(np.float32).mean(-1) / 255.0
    return np.linspace(0.2, 1.0, image.shape[1], dtype=np.float32)[None, :] + 0.1 * grey


def probed_stage() -> type:
    """``RefineStage`` that also records the ``CUDA_VISIBLE_DEVICES`` its actor was given
    (made on call, so importing this module needs no pipeline code)."""
    from sddr_pipeline.pipelines.stage import RefineStage

    class GpuProbeStage(RefineStage):
        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            out = super().__call__(batch)
            out["cuda_visible_devices"] = np.array([os.environ.get("CUDA_VISIBLE_DEVICES", "")] * len(out["depth"]))
            time.sleep(0.2)  # let the other actor take the next batch
            return out

    return GpuProbeStage
