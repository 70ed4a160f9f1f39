"""The predictor contract: what any monocular depth model must offer to be refined by SDDR."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

Space = Literal["disparity", "depth"]


class PredictorError(RuntimeError):
    """A predictor could not be built or could not predict (bad spec, bad file, bad output)."""


@dataclass(frozen=True)
class OutputKind:
    """What a predictor's numbers mean.

    ``space`` is ``"disparity"`` for inverse-depth-like outputs (MiDaS, Depth Anything:
    larger = nearer) and ``"depth"`` otherwise; ``metric`` says whether the values are in
    metres (depth) or 1/metres (disparity) rather than up to an unknown scale and shift.
    """

    space: Space = "disparity"
    metric: bool = False

    def __post_init__(self) -> None:
        if self.space not in ("disparity", "depth"):
            raise PredictorError(f"output kind must be 'disparity' or 'depth', got {self.space!r}")

    @classmethod
    def from_options(cls, options: dict[str, str], default: "OutputKind | None" = None) -> "OutputKind":
        """Read ``kind=depth|disparity`` and ``metric=true|false`` spec options."""
        base = default or cls()
        space = options.get("kind", base.space)
        metric = parse_bool(options["metric"], "metric") if "metric" in options else base.metric
        return cls(space=space, metric=metric)  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"{'metric' if self.metric else 'relative'} {self.space}"


@dataclass(frozen=True)
class SampleContext:
    """Optional facts about the image being predicted, passed through to the predictor.

    ``gt`` is ground truth at the full image's resolution (``gt_kind`` says depth or
    disparity; 0, NaN and inf mark invalid pixels); ``intrinsics`` is a 3x3 K of the full
    image. When the image handed to the predictor is a window of the full image, ``crop``
    is its box ``(y0, x0, y1, x1)`` in full-image pixels and ``gt`` stays full-size: use
    :meth:`gt_crop` to get the matching ground truth.
    """

    name: str = ""
    gt: np.ndarray | None = None
    gt_kind: Literal["depth", "disparity"] = "depth"
    intrinsics: np.ndarray | None = None
    crop: tuple[int, int, int, int] | None = None
    extra: dict = field(default_factory=dict)

    def cropped(self, box: tuple[int, int, int, int]) -> "SampleContext":
        """The context of a window ``box`` = (y0, x0, y1, x1) of this context's image."""
        y0, x0, y1, x1 = box
        if self.crop is not None:
            oy, ox = self.crop[0], self.crop[1]
            y0, x0, y1, x1 = y0 + oy, x0 + ox, y1 + oy, x1 + ox
        return dataclasses.replace(self, crop=(int(y0), int(x0), int(y1), int(x1)))

    def gt_crop(self) -> np.ndarray | None:
        if self.gt is None or self.crop is None:
            return self.gt
        y0, x0, y1, x1 = self.crop
        return self.gt[y0:y1, x0:x1]


@runtime_checkable
class Predictor(Protocol):
    """Anything that maps an HxWx3 uint8 image to a depth-like map.

    ``predict`` runs the model with the image resized so that its long side is
    ``resolution`` px (aspect kept; a model may round each side to its patch multiple) and
    returns a float32 2-D map at that working resolution (NOT resized back).
    """

    name: str
    kind: OutputKind

    def predict(self, image: np.ndarray, resolution: int, context: SampleContext | None = None) -> np.ndarray: ...

    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        resolution: int,
        contexts: Sequence[SampleContext | None] | None = None,
    ) -> list[np.ndarray]: ...


class BasePredictor:
    """Convenience base: subclasses implement ``predict``; batching defaults to a loop."""

    name: str = "predictor"
    kind: OutputKind = OutputKind()
    #: (low, high) working resolutions this predictor prefers, or None for the defaults.
    default_resolutions: tuple[int, int] | None = None

    def predict(self, image: np.ndarray, resolution: int, context: SampleContext | None = None) -> np.ndarray:
        raise NotImplementedError

    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        resolution: int,
        contexts: Sequence[SampleContext | None] | None = None,
    ) -> list[np.ndarray]:
        contexts = list(contexts) if contexts is not None else [None] * len(images)
        return [self.predict(im, resolution, ctx) for im, ctx in zip(images, contexts)]

    def info(self) -> dict:
        return {"name": self.name, "kind": self.kind.space, "metric": self.kind.metric}


def working_size(height: int, width: int, resolution: int, multiple: int = 1) -> tuple[int, int]:
    """(h, w) with long side ``resolution`` and the input's aspect, each side rounded to
    the nearest positive multiple of ``multiple``.

    >>> working_size(375, 1242, 384)
    (116, 384)
    >>> working_size(480, 640, 518, multiple=14)
    (392, 518)
    """
    if height <= 0 or width <= 0:
        raise PredictorError(f"image size must be positive, got {height}x{width}")
    if resolution <= 0:
        raise PredictorError(f"working resolution must be positive, got {resolution}")
    scale = resolution / max(height, width)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w


def check_image(image: np.ndarray) -> None:
    """Raise :class:`PredictorError` unless ``image`` is an HxWx3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise PredictorError(f"predictors take HxWx3 uint8 images, got {got}")


def check_output(pred: np.ndarray, who: str) -> np.ndarray:
    """Squeeze a model output to a float32 2-D map, or fail naming the predictor.

    Complex output is refused rather than cast (the cast would drop the imaginary part
    with only a warning).
    """
    arr = np.asarray(pred)
    if np.iscomplexobj(arr):
        raise PredictorError(f"{who} returned complex values ({arr.dtype}); a depth map must be real")
    if arr.dtype.kind not in "biuf":
        raise PredictorError(f"{who} returned {arr.dtype} values, expected a numeric depth map")
    arr = np.squeeze(arr.astype(np.float32, copy=False))
    if arr.ndim != 2:
        raise PredictorError(f"{who} returned an array of shape {np.shape(pred)}, expected a 2-D depth map")
    return arr


def check_prediction(pred: np.ndarray, kind: OutputKind, who: str, window: bool = False) -> np.ndarray:
    """:func:`check_output`, then refuse maps that hold no depth, naming the reason.

    A map SDDR can refine has finite pixels that are not all equal (all NaN/inf, all zero
    or constant maps would be refined into a map of about zero and reported as success);
    a depth map needs a positive pixel, and metric disparity (1/metres) cannot be
    negative. Relative disparity is affine-invariant, so its sign is free. Single
    NaN/inf pixels (and non-positive pixels of a depth map) are holes, filled later by
    :func:`sddr_pipeline.inference.normalize.sanitize`. A ``window`` of an image may be
    flat (a wall, the sky, a hole of a depth map): only the finite-value rules apply.
    """
    arr = check_output(pred, who)
    values = arr[np.isfinite(arr)]
    if values.size == 0:
        raise PredictorError(f"{who} returned no finite value (all {arr.size} pixels are NaN or inf)")
    lo, hi = float(values.min()), float(values.max())
    if kind.space == "disparity" and kind.metric and lo < 0:
        raise PredictorError(f"{who} returned negative metric disparity (min {lo:g}); 1/metres cannot be negative")
    if window:
        return arr
    if lo == hi:
        raise PredictorError(f"{who} returned a constant map ({lo:g} at every finite pixel); it holds no depth")
    if kind.space == "depth" and hi <= 0:
        raise PredictorError(f"{who} returned a depth map with no positive value (max {hi:g})")
    return arr


def parse_bool(value: str, key: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise PredictorError(f"option {key}={value!r} is not a boolean (use true/false)")


@dataclass(frozen=True)
class PredictorSpec:
    """A parsed spec string ``name[:arg][;key=value,key=value]``."""

    name: str
    arg: str | None
    options: dict[str, str]

    @classmethod
    def parse(cls, spec: str) -> "PredictorSpec":
        if not spec or not spec.strip():
            raise PredictorError("empty predictor spec")
        head, _, opts = spec.strip().partition(";")
        name, sep, arg = head.partition(":")
        options = parse_options(opts)
        return cls(name=name.strip(), arg=arg if sep else None, options=options)


PredictorFactory = Callable[[PredictorSpec, str], Predictor]
"""What a registered predictor name maps to: ``factory(spec, device) -> Predictor``."""


def parse_options(text: str) -> dict[str, str]:
    """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}``; empty text -> ``{}``."""
    options: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise PredictorError(f"predictor option {item!r} must look like key=value")
        options[key.strip()] = value.strip()
    return options
