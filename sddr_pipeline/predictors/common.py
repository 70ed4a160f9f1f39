"""Helpers shared by the built-in predictors: option parsing, file digests, image resizing,
tensor conversion, output resizing and batching of same-size images."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..io.hashing import sha256_files
from ..io.mappings import check_keys
from .base import BasePredictor, PredictorError, SampleContext, check_image, check_output

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
def check_options(options: dict[str, str], allowed: frozenset[str], who: str) -> None:
    """Fail on option keys the predictor does not know, listing the ones it does."""
    check_keys(options, allowed, what=who, noun="option", error=PredictorError)


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
    return sha256_files(*paths)[:12]


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
        out = torch.from_numpy(pred)
    elif isinstance(pred, torch.Tensor):
        out = pred.detach()
    else:
        raise PredictorError(f"{who} returned a {type(pred).__name__}, expected a tensor")
    if out.is_complex():
        raise PredictorError(f"{who} returned complex values ({out.dtype}); a depth map must be real")
    out = out.float()
    if out.ndim == 4 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim != 3:
        raise PredictorError(f"{who} returned shape {tuple(out.shape)}, expected BxHxW or Bx1xHxW")
    if tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return [check_output(m, who) for m in out.cpu().numpy()]


def group_indices(keys: Sequence[Hashable]) -> list[list[int]]:
    """The indices of equal ``keys``, one list per distinct key, in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def group_by_shape(
    images: Sequence[np.ndarray], run: Callable[[list[int]], list[np.ndarray]]
) -> list[np.ndarray]:
    """Call ``run(indices)`` once per group of same-shape images; return results in input order."""
    for image in images:
        check_image(image)
    results: list[np.ndarray | None] = [None] * len(images)
    for indices in group_indices([image.shape for image in images]):
        for i, pred in zip(indices, run(indices)):
            results[i] = pred
    return results  # type: ignore[return-value]


class SameShapeBatchPredictor(BasePredictor):
    """A model that runs on batches of same-shape images: subclasses implement
    :meth:`predict_same_shape`; :meth:`predict` is a batch of one and :meth:`predict_batch`
    runs each group of same-shape images as one batch, returning maps in input order."""

    def predict(self, image: np.ndarray, resolution: int, context: SampleContext | None = None) -> np.ndarray:
        return self.predict_batch([image], resolution, [context])[0]

    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        resolution: int,
        contexts: Sequence[SampleContext | None] | None = None,
    ) -> list[np.ndarray]:
        return group_by_shape(images, lambda indices: self.predict_same_shape([images[i] for i in indices], resolution))

    def predict_same_shape(self, images: list[np.ndarray], resolution: int) -> list[np.ndarray]:
        """Working-resolution maps of ``images``, which all have the same shape."""
        raise NotImplementedError
