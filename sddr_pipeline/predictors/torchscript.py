"""``torchscript:<path>``: a TorchScript depth model exported by the user.

I/O convention (shared with ``onnx:<path>``): the module takes a float32 tensor
``Bx3xHxW`` with RGB in [0, 1] normalised by ``(x - mean) / std`` (ImageNet statistics
by default) and returns ``BxHxW`` or ``Bx1xHxW``. ``H, W`` is the working size: long side
= the requested resolution, aspect kept, each side rounded to ``multiple`` (default 1: no
rounding; use e.g. 14 for DINOv2-based exports). An output of another spatial size is
resized bilinearly to the working size.

Options: ``mean=0.485/0.456/0.406``, ``std=0.229/0.224/0.225``, ``multiple=1``,
``kind=depth|disparity`` and ``metric=true|false`` (default: relative disparity).

"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..registry import PREDICTORS
from .common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SameShapeBatchPredictor,
    check_options,
    existing_file,
    file_digest,
    maps_to_size,
    parse_positive_int,
    parse_triplet,
    resize_image,
    to_tensor,
)
from .base import (
    OutputKind,
    PredictorError,
    PredictorSpec,
    working_size,
)

TENSOR_OPTIONS = frozenset({"mean", "std", "multiple", "kind", "metric"})



class TensorModelPredictor(SameShapeBatchPredictor):
    """Shared logic of exported models that follow the ``Bx3xHxW -> BxHxW`` convention."""

    def __init__(self, name: str, options: dict[str, str], who: str) -> None:
        check_options(options, TENSOR_OPTIONS, who)
        self.name = name
        self.who = who
        self.kind = OutputKind.from_options(options)
        self.mean = parse_triplet(options["mean"], "mean") if "mean" in options else IMAGENET_MEAN
        self.std = parse_triplet(options["std"], "std") if "std" in options else IMAGENET_STD
        if any(s == 0 for s in self.std):
            raise PredictorError(f"{who}: option std must not contain 0")
        self.multiple = parse_positive_int(options["multiple"], "multiple") if "multiple" in options else 1

    def run(self, batch: torch.Tensor) -> torch.Tensor | np.ndarray:
        raise NotImplementedError

    def predict_same_shape(self, images: list[np.ndarray], resolution: int) -> list[np.ndarray]:
        h, w = images[0].shape[:2]
        size = working_size(h, w, resolution, self.multiple)
        batch = to_tensor([resize_image(image, size) for image in images], self.mean, self.std)
        try:
            pred = self.run(batch)
        except PredictorError:
            raise
        except Exception as exc:
            raise PredictorError(f"{self.who} failed on a {tuple(batch.shape)} input: {exc}") from exc
        return maps_to_size(pred, size, self.who)


class TorchScriptPredictor(TensorModelPredictor):
    """A ``torch.jit`` module loaded from a file."""

    def __init__(self, path: Path, device: str, options: dict[str, str]) -> None:
        who = f"torchscript model {path}"
        super().__init__(f"torchscript:{path.name}@{file_digest(path)}", options, who)
        try:
            with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; the format still loads
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:
            raise PredictorError(f"{who} is not a loadable TorchScript file: {exc}") from exc
        self.device = torch.device(device)

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch.to(self.device))


@PREDICTORS.register("torchscript")
def from_spec(spec: PredictorSpec, device: str) -> TorchScriptPredictor:
    return TorchScriptPredictor(existing_file(spec.arg, "torchscript"), device, spec.options)
