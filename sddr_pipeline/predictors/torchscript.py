"""``torchscript:<path>``: a TorchScript depth model exported by the user.

I/O convention (shared with ``onnx:<path>``): the module takes a float32 tensor
``Bx3xHxW`` with RGB in [0, 1] normalised by ``(x - mean) / std`` (ImageNet statistics
by default) and returns ``BxHxW`` or ``Bx1xHxW``. ``H, W`` is the working size: long side
= the requested resolution, aspect kept, each side rounded to ``multiple`` (default 1: no
rounding; use e.g. 14 for DINOv2-based exports). An output of another spatial size is
resized bilinearly to the working size.

Options: ``mean=0.485/0.456/0.406``, ``std=0.229/0.224/0.225``, ``multiple=1``,
``kind=depth|disparity`` and ``metric=true|false`` (default: relative disparity).

The image helpers here (:func:`resize_image`, :func:`group_by_shape`, ...) are shared by
the other built-in predictors.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TENSOR_OPTIONS = frozenset({"mean", "std", "multiple", "kind", "metric"})


def check_options(options: dict[str, str], allowed: frozenset[str], who: str) -> None:
    """Fail on option keys the predictor does not know, listing the ones it does."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise PredictorError(f"{who}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")


def parse_triplet(value: str, key: str) -> tuple[float, float, float]:
    """``"0.5/0.5/0.5"`` -> (0.5, 0.5, 0.5); one number is used for all three channels."""
    try:
        parts = tuple(float(p) for p in value.split("/"))
    except ValueError:
        raise PredictorError(f"option {key}={value!r} must be three numbers like 0.485/0.456/0.406") from None
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise PredictorError(f"option {key}={value!r} must have 1 or 3 values separated by '/'")
    return parts  # type: ignore[return-value]


def parse_positive_int(value: str, key: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise PredictorError(f"option {key}={value!r} is not an integer") from None
    if number < 1:
        raise PredictorError(f"option {key}={value!r} must be >= 1")
    return number


def file_digest(*paths: Path) -> str:
    """First 12 hex digits of the sha256 of the files' bytes: a version for manifests."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def existing_file(arg: str | None, who: str) -> Path:
    if not arg:
        raise PredictorError(f"{who} needs a file path, e.g. {who}:/models/depth.pt")
    path = Path(arg).expanduser()
    if not path.is_file():
        raise PredictorError(f"{who}: model file {path} does not exist")
    return path


def resize_image(image: np.ndarray, size: tuple[int, int], resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize an HxWx3 uint8 image to ``size`` = (h, w); PIL filters are antialiased when shrinking."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), resample=resample))


def to_tensor(
    images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float], scale: float = 1 / 255
) -> torch.Tensor:
    """Stack same-size HxWx3 uint8 images into a normalised float32 Bx3xHxW tensor."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() * scale
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - m) / s


def maps_to_size(pred: torch.Tensor | np.ndarray, size: tuple[int, int], who: str) -> list[np.ndarray]:
    """``BxHxW`` / ``Bx1xHxW`` model output -> B float32 maps of ``size``, bilinear if needed."""
    if isinstance(pred, np.ndarray):
        out = torch.from_numpy(pred).float()
    elif isinstance(pred, torch.Tensor):
        out = pred.detach().float()
    else:
        raise PredictorError(f"{who} returned a {type(pred).__name__}, expected a tensor")
    if out.ndim == 4 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim != 3:
        raise PredictorError(f"{who} returned shape {tuple(out.shape)}, expected BxHxW or Bx1xHxW")
    if tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return [check_output(m, who) for m in out.cpu().numpy()]


def group_by_shape(
    images: Sequence[np.ndarray], run: Callable[[list[int]], list[np.ndarray]]
) -> list[np.ndarray]:
    """Call ``run(indices)`` once per group of same-shape images; return results in input order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        check_image(image)
        groups.setdefault(image.shape, []).append(i)
    results: list[np.ndarray | None] = [None] * len(images)
    for indices in groups.values():
        for i, pred in zip(indices, run(indices)):
            results[i] = pred
    return results  # type: ignore[return-value]


class TensorModelPredictor(BasePredictor):
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

    def predict(self, image: np.ndarray, resolution: int, context: SampleContext | None = None) -> np.ndarray:
        return self.predict_batch([image], resolution, [context])[0]

    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        resolution: int,
        contexts: Sequence[SampleContext | None] | None = None,
    ) -> list[np.ndarray]:
        def run_group(indices: list[int]) -> list[np.ndarray]:
            h, w = images[indices[0]].shape[:2]
            size = working_size(h, w, resolution, self.multiple)
            batch = to_tensor([resize_image(images[i], size) for i in indices], self.mean, self.std)
            try:
                pred = self.run(batch)
            except PredictorError:
                raise
            except Exception as exc:
                raise PredictorError(f"{self.who} failed on a {tuple(batch.shape)} input: {exc}") from exc
            return maps_to_size(pred, size, self.who)

        return group_by_shape(images, run_group)


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


def from_spec(spec: PredictorSpec, device: str) -> TorchScriptPredictor:
    return TorchScriptPredictor(existing_file(spec.arg, "torchscript"), device, spec.options)
