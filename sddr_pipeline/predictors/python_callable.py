"""``python:<module>:<callable>``: any Python function or class as a depth predictor.

``<module>`` is an importable dotted name or a path to a ``.py`` file; ``<callable>`` may
be a dotted attribute path (``pkg.mod:models.Model``). A class is instantiated once with no arguments and its instance is called. The callable
is used in one of two ways, chosen from its signature:

* it accepts a ``resolution`` parameter: ``fn(image, resolution=r)`` gets the ORIGINAL
  HxWx3 uint8 image and does its own resizing (for models with their own patch rounding);
  its 2-D output is returned as is.
* otherwise: ``fn(image)`` gets the image already resized (PIL bilinear, antialiased when
  shrinking) to the working size, long side = ``r``; an output of another size is
  resized bilinearly to the working size.

Options: ``kind=depth|disparity``, ``metric=true|false`` (default relative disparity).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..registry import PREDICTORS
from .base import (
    BasePredictor,
    OutputKind,
    PredictorError,
    PredictorSpec,
    SampleContext,
    check_image,
    check_output,
    working_size,
)
from .common import check_options, file_digest, maps_to_size, resize_image

OPTIONS = frozenset({"kind", "metric"})


def _import_module(target: str):
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise PredictorError(f"python predictor: module file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"sddr_user_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise PredictorError(f"python predictor: cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(target)


def load_callable(target: str) -> tuple[Callable[..., Any], str]:
    """Import ``module:attr`` and return (callable, a version string for manifests)."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise PredictorError(f"python predictor spec must be python:<module>:<callable>, got python:{target}")
    try:
        module = _import_module(module_name)
    except PredictorError:
        raise
    except Exception as exc:
        raise PredictorError(f"python predictor: cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PredictorError(f"python predictor: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise PredictorError(f"python predictor: {target} could not be instantiated with no arguments: {exc}") from exc
    if not callable(obj):
        raise PredictorError(f"python predictor: {target} is not callable")
    source = getattr(module, "__file__", None)
    version = getattr(module, "__version__", None)
    if version is None and source and Path(source).is_file():
        version = file_digest(Path(source))
    return obj, f"python:{target}" + (f"@{version}" if version else "")


def _takes_resolution(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    param = params.get("resolution")
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


class PythonCallablePredictor(BasePredictor):
    """Wraps a user callable; see the module docstring for the calling convention."""

    def __init__(self, fn: Callable[..., Any], name: str, options: dict[str, str]) -> None:
        check_options(options, OPTIONS, name)
        self.fn = fn
        self.name = name
        self.kind = OutputKind.from_options(options)
        self.own_resize = _takes_resolution(fn)

    def predict(self, image: np.ndarray, resolution: int, context: SampleContext | None = None) -> np.ndarray:
        check_image(image)
        size = working_size(image.shape[0], image.shape[1], resolution)
        try:
            if self.own_resize:
                return check_output(_as_array(self.fn(image, resolution=resolution)), self.name)
            out = check_output(_as_array(self.fn(resize_image(image, size))), self.name)
        except PredictorError:
            raise
        except Exception as exc:
            raise PredictorError(f"{self.name} failed: {exc}") from exc
        return out if out.shape == size else maps_to_size(out[None], size, self.name)[0]


def _as_array(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu()
        return (out if out.is_complex() else out.float()).numpy()
    return np.asarray(out)


@PREDICTORS.register("python")
def from_spec(spec: PredictorSpec, device: str) -> PythonCallablePredictor:
    if not spec.arg:
        raise PredictorError("python predictor spec must be python:<module>:<callable>")
    fn, name = load_callable(spec.arg)
    return PythonCallablePredictor(fn, name, spec.options)
