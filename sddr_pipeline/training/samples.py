"""Training examples: (low, high, target, mask) crops made through ANY depth predictor.

For one (image, ground truth) pair the predictor runs on the FULL image at ``low_res``
and at ``high_res`` (as at inference), both outputs become disparity-like
(``to_disparity_like``), and one random square box of the image is cut out of the low
prediction, the high prediction and the ground-truth disparity (1/depth for depth gt) and
resampled to ``crop`` x ``crop``. The box is placed in relative image coordinates and
sampled with exact sub-pixel geometry, so the three maps stay registered although they
have different sizes. A random horizontal flip follows, then low and high are min-max
normalised independently (as inference does) and the target's valid pixels are min-max
normalised to [0, 1] (the losses are scale/shift invariant; this only fixes the range).

Augmentation, all drawn from ``numpy.random.default_rng([seed, index])`` so example
``index`` is the same on every run and a resumed run sees exactly the same data:

* source: one of the configured sources, with probability proportional to its weight;
  a synthetic source renders a fresh scene per example (scene seed in [0, 2**62); the
  validation scenes use seeds >= 2**62, so they are never trained on);
* simulated predictor: ``cons``, ``edge``, ``texture`` uniform over :class:`NoiseRanges`
  (defaults 0.05-0.3, 1-4 px, 0-0.5) and a fresh noise seed per example; with
  probability ``noise.clean`` all three are 0 (the identity cases: LOW differs from the
  truth only by its resolution); with probability ``noise.mixed`` the HIGH prediction
  mixes two noise draws over a random soft partition of the image
  (:class:`MixedNoisePredictor`: one part nearly exact, the other badly broken, say);
  with probability ``noise.sharp_low`` the LOW input is already sharp
  (:class:`SharpLowPredictor`: the LOW regime drawn at ``high_res``, edge blur
  U(0, ``SHARP_LOW_EDGE``) px), as a two-stage window's LOW (the one-stage estimate) is,
  while HIGH keeps the example's noise: there the right output is LOW;
* scale jitter: the box side, in HIGH-prediction pixels, is ``crop * U(crop_scale)``
  (1.0 = the high map at its native resolution, as the network sees it at inference),
  capped by the high map's short side;
* position: uniform; flip: probability 0.5 when enabled.

Unlabeled sources (``kind: unlabeled``, images without ground truth, through a real
predictor): the consistent LOW prediction, normalised and upsampled like the network's
low input, is the value target and every pixel is valid; self-distillation stages add
the pseudo-label G_S as the gradient target (see ``training.distill``).

Training shards (``kind: shards``, the output of ``sddr pseudolabel`` read directly from
its URI, see ``training.shard_source``): a row drawn uniformly from the shards replaces
the image and the predictor: its stored raw LOW and HIGH predictions (made disparity-like
by the source's ``prediction_space``) are cut with ONE box, drawn and flipped exactly as
above, the LOW crop is both the low input and the value target (all pixels valid, like
``unlabeled``), and the stored G_S (image size) is cut with the same box into
``TrainingExample.gs``. The predictor is not run and no noise is drawn. Stage ``gt``
uses L_gt only, as for every source (the paper's stage 1; a batch's loss does not depend
on where its examples came from); ``distill`` rounds use the stored G_S as the example's
pseudo-label instead of asking the teacher (``training.distill``), unless the round sets
``relabel_shards``.

``ExampleSource.example(index, origin=True)`` also returns the crop's :class:`CropOrigin`
(its RGB pixels and ground truth, registered and flipped like the maps, and a predictor
for its windows), which the self-distillation rounds need to re-predict windows of the
crop. Making it draws nothing from the example's generator, so the example is the same.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Dataset, make_scene, open_dataset
from ..inference.normalize import minmax_normalize_batch, resize, sanitize, to_disparity_like
from ..predictors import OutputKind, Predictor, PredictorSpec, SampleContext, get_predictor
from ..predictors.base import parse_options
from ..predictors.simulated import noise_rng, random_waves

#: Scene seeds at or above this value are reserved for validation scenes.
VALIDATION_SEED_BASE = 2**62
#: Folder names of this project's validation sets; training refuses to read them.
HELD_OUT_NAMES = frozenset({"middlebury2014q", "kitti_sample", "nyu_sample"})
#: Validation-set layouts; a dataset source with one of them is refused too.
HELD_OUT_LAYOUTS = frozenset({"middlebury2014", "kitti", "nyu"})

SourceKind = Literal["synthetic", "dataset", "unlabeled", "shards"]
SOURCE_KINDS: tuple[str, ...] = ("synthetic", "dataset", "unlabeled", "shards")


@dataclass(frozen=True)
class CropOrigin:
    """What lies under a training crop, for predicting windows of it again.

    ``image`` is the crop box of the RGB image resampled at the image's own pixel density
    (hxwx3 uint8); ``context`` names the example and carries the ground-truth disparity of
    the box at the same size (0 = invalid; None for unlabeled data); both are flipped like
    the example's maps. ``predictor`` predicts windows of ``image`` and ``high_res`` is
    the base resolution of those windows (the crop's own HIGH resolution).
    """

    image: np.ndarray
    context: SampleContext
    predictor: Predictor
    high_res: int


@dataclass(frozen=True)
class TrainingExample:
    """One training crop: ``low``/``high`` 1xHxW in [0, 1], ``target`` 1xHxW disparity
    (valid pixels in [0, 1], 0 elsewhere), ``mask`` 1xHxW bool of valid target pixels;
    ``gs`` 1xHxW: a stored pseudo-label G_S cut like the maps (training shards only)."""

    low: torch.Tensor
    high: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    name: str = ""
    origin: CropOrigin | None = None
    gs: torch.Tensor | None = None


@dataclass(frozen=True)
class Batch:
    """Stacked examples, each field Bx1xHxW; self-distillation batches add the pseudo-label
    ``gs`` (Bx1xHxW) and its high-frequency ``regions`` (BxKxHxW bool)."""

    low: torch.Tensor
    high: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    names: tuple[str, ...]
    gs: torch.Tensor | None = None
    regions: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.low.to(device), self.high.to(device), self.target.to(device), self.mask.to(device), self.names,
            None if self.gs is None else self.gs.to(device), None if self.regions is None else self.regions.to(device),
        )


@dataclass(frozen=True)
class NoiseRanges:
    """Uniform ranges of the simulated predictor's noise levels, sampled per example;
    ``clean``: probability of an example with no noise; ``mixed``: probability that its
    HIGH map mixes two noise draws; ``sharp_low``: probability that its LOW input is
    already sharp (see the module docstring). At 0 they draw nothing, so recipes without
    them make the same examples as before they existed."""

    cons: tuple[float, float] = (0.05, 0.3)
    edge: tuple[float, float] = (1.0, 4.0)
    texture: tuple[float, float] = (0.0, 0.5)
    clean: float = 0.0
    mixed: float = 0.0
    sharp_low: float = 0.0

    def __post_init__(self) -> None:
        limits = {"cons": (0.0, 0.5), "edge": (0.0, 8.0), "texture": (0.0, 1.0)}
        for key, (lo_lim, hi_lim) in limits.items():
            value = getattr(self, key)
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"noise.{key} must be a [min, max] pair of numbers, got {value!r}") from None
            if not lo_lim <= lo <= hi <= hi_lim:
                raise ValueError(f"noise.{key} must satisfy {lo_lim:g} <= min <= max <= {hi_lim:g}, got {value!r}")
            object.__setattr__(self, key, (lo, hi))
        for key in ("clean", "mixed", "sharp_low"):
            value = float(getattr(self, key))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"noise.{key} must be a probability in [0, 1], got {getattr(self, key)!r}")
            object.__setattr__(self, key, value)


@dataclass(frozen=True)
class SourceSpec:
    """A data source: ``synthetic`` scenes of ``size`` (h, w) rendered on the fly, or a
    ``dataset`` folder read with ``open_dataset(root, layout)``, or an ``unlabeled`` folder
    (any layout; ground truth, if any, is ignored), or ``shards``: training shards of
    ``sddr pseudolabel`` at the URI ``root``, opened with ``storage_options`` (fsspec; not
    compared, printed or recorded: they may hold credentials), their raw predictions in
    ``prediction_space`` (``auto``, ``disparity`` or ``depth``); ``weight`` is its share."""

    kind: SourceKind = "synthetic"
    root: str | None = None
    layout: str = "auto"
    weight: float = 1.0
    size: tuple[int, int] = (384, 512)
    storage_options: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    prediction_space: str = "auto"


@dataclass(frozen=True)
class ExampleSettings:
    """How examples are made (see the module docstring)."""

    predictor: str = "simulated"
    low_res: int = 384
    high_res: int = 1024
    crop: int = 256
    crop_scale: tuple[float, float] = (0.75, 1.0)
    flip: bool = True
    noise: NoiseRanges = NoiseRanges()
    seed: int = 0


def is_simulated(spec: str) -> bool:
    return PredictorSpec.parse(spec).name == "simulated"


def simulated_spec(base: str, low_res: int, high_res: int, cons: float, edge: float, texture: float, seed: int) -> str:
    """A ``simulated`` spec with the given noise levels and regime boundary (low/high)."""
    parsed = PredictorSpec.parse(base)
    options = {**parse_options(parsed.arg or ""), **parsed.options}
    options.update(low=str(low_res), high=str(high_res), cons=f"{cons:.6g}", edge=f"{edge:.6g}",
                   texture=f"{texture:.6g}", seed=str(seed))
    return "simulated:" + ",".join(f"{k}={v}" for k, v in options.items())


def gt_disparity(gt: np.ndarray, gt_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth -> (disparity float32, valid bool); 0, negative, NaN, inf are invalid."""
    arr = np.asarray(gt, dtype=np.float64)
    valid = np.isfinite(arr) & (arr > 0)
    disp = np.zeros(arr.shape, dtype=np.float64)
    disp[valid] = 1.0 / arr[valid] if gt_kind == "depth" else arr[valid]
    return disp.astype(np.float32), valid


def crop_map(x: torch.Tensor, box: tuple[float, float, float, float], size: int | tuple[int, int]) -> torch.Tensor:
    """Resample the box ``(y0, x0, y1, x1)`` (relative coordinates in [0, 1], pixel edges
    at 0 and 1) of a 1x1xhxw map to ``size`` (square side or (h, w)), bilinear at exact
    sub-pixel positions; when the box holds more pixels than the output, the whole map is
    first area-shrunk (antialiased) so the crop does not alias."""
    oh, ow = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    y0, x0, y1, x1 = box
    fy = (y1 - y0) * h / oh
    fx = (x1 - x0) * w / ow
    if fy > 1.0 or fx > 1.0:
        x = resize(x, (max(1, round(h / max(fy, 1.0))), max(1, round(w / max(fx, 1.0)))))
    ys = 2 * (y0 + (torch.arange(oh, dtype=torch.float32) + 0.5) / oh * (y1 - y0)) - 1
    xs = 2 * (x0 + (torch.arange(ow, dtype=torch.float32) + 0.5) / ow * (x1 - x0)) - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    return F.grid_sample(x.float(), grid.to(x.device), mode="bilinear", padding_mode="border", align_corners=False)


def crop_target(
    disp: np.ndarray, valid: np.ndarray, box: tuple[float, float, float, float], size: int | tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask-aware :func:`crop_map` of a ground-truth disparity: values are averaged over
    valid pixels only; an output pixel is valid when all its input support was valid."""
    m = torch.from_numpy(valid.astype(np.float32))[None, None]
    d = torch.from_numpy(np.where(valid, disp, 0).astype(np.float32))[None, None]
    num = crop_map(d * m, box, size)
    den = crop_map(m, box, size)
    ok = den >= 0.999
    return torch.where(ok, num / den.clamp_min(1e-6), torch.zeros_like(num)), ok


def normalize_target(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Min-max normalise the valid pixels to [0, 1]; invalid pixels become 0."""
    if not bool(mask.any()):
        return torch.zeros_like(target)
    vals = target[mask]
    lo, hi = vals.min(), vals.max()
    out = (target - lo) / (hi - lo).clamp_min(1e-12)
    return torch.where(mask, out, torch.zeros_like(out))


def draw_box(rng: np.random.Generator, high_shape: tuple[int, int], crop: int, crop_scale: tuple[float, float]) -> tuple[float, float, float, float]:
    """A square box (relative coordinates) whose side is ``crop * U(crop_scale)`` HIGH-map
    pixels, capped by the high map's short side, at a uniform position."""
    h, w = high_shape
    side = min(crop * rng.uniform(*crop_scale), float(min(h, w)))
    y0 = rng.uniform(0.0, h - side)
    x0 = rng.uniform(0.0, w - side)
    return y0 / h, x0 / w, (y0 + side) / h, (x0 + side) / w


def make_example(
    image: np.ndarray,
    gt: np.ndarray | None,
    gt_kind: str,
    predictor: Predictor,
    rng: np.random.Generator,
    *,
    name: str,
    low_res: int,
    high_res: int,
    crop: int,
    crop_scale: tuple[float, float] = (0.75, 1.0),
    flip: bool = True,
    context: SampleContext | None = None,
    window_predictor: tuple[Predictor, int] | None = None,
) -> TrainingExample:
    """One training crop of ``image`` through ``predictor`` (see the module docstring).

    ``gt=None`` (unlabeled data): the normalised LOW crop is the target, all pixels valid.
    ``window_predictor`` = (predictor, base resolution) attaches a :class:`CropOrigin`.
    """
    ctx = context or SampleContext(name=name, gt=gt, gt_kind=gt_kind)  # type: ignore[arg-type]
    kind: OutputKind = predictor.kind
    low_raw = predictor.predict(image, low_res, ctx)
    high_raw = predictor.predict(image, high_res, ctx)
    low = torch.from_numpy(to_disparity_like(sanitize(low_raw), kind))[None, None]
    high = torch.from_numpy(to_disparity_like(sanitize(high_raw), kind))[None, None]
    box = draw_box(rng, tuple(high.shape[-2:]), crop, crop_scale)
    do_flip = bool(flip and rng.random() < 0.5)
    low_c = crop_map(low, box, crop)
    high_c = crop_map(high, box, crop)
    if gt is None:
        target, mask = low_c, torch.ones_like(low_c, dtype=torch.bool)
    else:
        disp, valid = gt_disparity(gt, gt_kind)
        target, mask = crop_target(disp, valid, box, crop)
    if do_flip:
        low_c, high_c, target, mask = (t.flip(-1) for t in (low_c, high_c, target, mask))
    low_c = minmax_normalize_batch(low_c)
    high_c = minmax_normalize_batch(high_c)
    target = normalize_target(target, mask)
    origin = None
    if window_predictor is not None:
        origin = crop_origin(image, gt, gt_kind, box, do_flip, name, *window_predictor)
    return TrainingExample(low_c[0], high_c[0], target[0], mask[0], name, origin)


def make_stored_example(
    low_raw: np.ndarray,
    high_raw: np.ndarray,
    gs: np.ndarray,
    kind: OutputKind,
    rng: np.random.Generator,
    *,
    name: str,
    crop: int,
    crop_scale: tuple[float, float] = (0.75, 1.0),
    flip: bool = True,
) -> tuple[TrainingExample, tuple[float, float, float, float], bool]:
    """A training crop of STORED predictions (a training-shard row): ``low_raw``/``high_raw``
    at their working sizes in ``kind``'s space and G_S ``gs`` at the image's size, cut with
    one box (drawn on the HIGH map, as :func:`make_example` does) and flipped together; the
    normalised LOW crop is the value target, every pixel valid, and the G_S crop is the
    example's ``gs``. Returns (example, box, flipped)."""
    low = torch.from_numpy(to_disparity_like(sanitize(low_raw), kind))[None, None]
    high = torch.from_numpy(to_disparity_like(sanitize(high_raw), kind))[None, None]
    g = torch.from_numpy(np.nan_to_num(np.asarray(gs, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0))[None, None]
    box = draw_box(rng, tuple(high.shape[-2:]), crop, crop_scale)
    do_flip = bool(flip and rng.random() < 0.5)
    low_c, high_c, gs_c = (crop_map(t, box, crop) for t in (low, high, g))
    mask = torch.ones_like(low_c, dtype=torch.bool)
    if do_flip:
        low_c, high_c, gs_c = (t.flip(-1) for t in (low_c, high_c, gs_c))
    target = normalize_target(low_c, mask)
    low_c = minmax_normalize_batch(low_c)
    high_c = minmax_normalize_batch(high_c)
    return TrainingExample(low_c[0], high_c[0], target[0], mask[0], name, None, gs_c[0]), box, do_flip


def crop_origin(
    image: np.ndarray,
    gt: np.ndarray | None,
    gt_kind: str,
    box: tuple[float, float, float, float],
    flip: bool,
    name: str,
    predictor: Predictor,
    high_res: int,
) -> CropOrigin:
    """The :class:`CropOrigin` of the relative ``box``: RGB and ground-truth disparity
    resampled with :func:`crop_map` / :func:`crop_target` (so they stay registered with the
    example's maps) at the image's pixel density, flipped when the maps were."""
    h, w = image.shape[:2]
    size = (max(1, round((box[2] - box[0]) * h)), max(1, round((box[3] - box[1]) * w)))
    rgb = crop_map(torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None], box, size)
    gt_c = None
    if gt is not None:
        disp, valid = gt_disparity(gt, gt_kind)
        gt_c = crop_target(disp, valid, box, size)[0]
    if flip:
        rgb = rgb.flip(-1)
        gt_c = None if gt_c is None else gt_c.flip(-1)
    pixels = rgb[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    context = SampleContext(name=name, gt=None if gt_c is None else gt_c[0, 0].numpy(), gt_kind="disparity")
    return CropOrigin(np.ascontiguousarray(pixels), context, predictor, int(high_res))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(1)``, restoring the count after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def stack(examples: Sequence[TrainingExample]) -> Batch:
    return Batch(
        torch.stack([e.low for e in examples]),
        torch.stack([e.high for e in examples]),
        torch.stack([e.target for e in examples]),
        torch.stack([e.mask for e in examples]),
        tuple(e.name for e in examples),
    )


class MixedNoisePredictor:
    """Two simulated predictors that share the LOW regime (the first one's) and mix their
    HIGH maps over a random soft partition of the frame: ``m * first + (1 - m) * second``,
    ``m`` a logistic of a smooth random field (plane waves of 0.5-2 cycles per long side,
    transitions ~5 % of the long side wide), drawn from ``seed`` and the crop box."""

    kind = OutputKind("disparity", metric=False)

    def __init__(self, first: Predictor, second: Predictor, seed: int) -> None:
        self.first, self.second, self.seed = first, second, int(seed)
        self.name = f"mixed({first.name}|{second.name}|{self.seed})"
        self.default_resolutions = getattr(first, "default_resolutions", None)

    def regime(self, resolution: int) -> str:
        return self.first.regime(resolution)  # type: ignore[attr-defined]

    def predict(self, image: np.ndarray, resolution: int, context: SampleContext | None = None) -> np.ndarray:
        a = self.first.predict(image, resolution, context)
        if self.regime(resolution) == "low":
            return a
        b = self.second.predict(image, resolution, context)
        h, w = image.shape[:2]
        box = (context.crop if context is not None and context.crop else None) or (0, 0, h, w)
        rng = noise_rng(self.seed, getattr(context, "name", ""), box, "mix")
        field = random_waves(a.shape, rng, (0.5, 2.0))
        m = 1.0 / (1.0 + np.exp(-4.0 * field))
        return (m * a + (1.0 - m) * b).astype(np.float32)


#: Largest edge blur (px at ``high_res``) of a sharp LOW input (``noise.sharp_low``).
SHARP_LOW_EDGE = 1.0


class SharpLowPredictor:
    """``base`` with its LOW regime replaced by ``sharp``'s LOW regime drawn at
    ``resolution`` (the HIGH one): a LOW input as sharp as HIGH but consistent, like the
    one-stage estimate that a two-stage window refines against. HIGH calls go to ``base``."""

    kind = OutputKind("disparity", metric=False)

    def __init__(self, base: Predictor, sharp: Predictor, resolution: int) -> None:
        self.base, self.sharp, self.resolution = base, sharp, int(resolution)
        self.name = f"sharp-low({base.name}|{sharp.name})"
        self.default_resolutions = getattr(base, "default_resolutions", None)

    def regime(self, resolution: int) -> str:
        return self.base.regime(resolution)  # type: ignore[attr-defined]

    def predict(self, image: np.ndarray, resolution: int, context: SampleContext | None = None) -> np.ndarray:
        if self.regime(resolution) == "low":
            return self.sharp.predict(image, self.resolution, context)
        return self.base.predict(image, resolution, context)


def sharp_low_predictor(base: Predictor, settings: ExampleSettings, rng: np.random.Generator) -> SharpLowPredictor:
    """``base`` with a sharp LOW input (``noise.sharp_low``): a simulated predictor whose
    regime boundary puts ``high_res`` in its LOW regime, with no inconsistency or texture
    (LOW has none) and an edge blur of U(0, :data:`SHARP_LOW_EDGE`) px."""
    edge, seed = rng.uniform(0.0, SHARP_LOW_EDGE), int(rng.integers(0, 2**31))
    spec = simulated_spec(settings.predictor, settings.high_res, 4 * settings.high_res, 0.0, edge, 0.0, seed)
    return SharpLowPredictor(base, get_predictor(spec), settings.high_res)


def crop_window_predictor(
    settings: ExampleSettings, predictor: Predictor, simulated: str | None
) -> tuple[Predictor, int]:
    """Predictor and base resolution for windows of a crop treated as the image.

    A crop covers about ``crop`` HIGH-prediction pixels, so its own HIGH resolution is
    ``crop``. A simulated predictor (its per-example spec ``simulated``) is rebuilt with
    its LOW/HIGH regime boundary scaled to the crop (low ``crop * low_res / high_res``,
    high ``crop``), so windows predicted near ``crop`` px fall in its HIGH regime, as
    whole images at ``high_res`` do. A real ``predictor``'s HIGH regime is an absolute
    input size, so its windows run at the configured ``high_res``.
    """
    if simulated is None:
        return predictor, settings.high_res
    if isinstance(predictor, SharpLowPredictor):  # windows refine against the crop's estimate
        predictor = predictor.base
    if isinstance(predictor, MixedNoisePredictor):  # its windows see the first noise draw only
        simulated = predictor.first.name
    low = max(1, round(settings.crop * settings.low_res / settings.high_res))
    options = parse_options(PredictorSpec.parse(simulated).arg or "")
    return get_predictor(simulated_spec(
        simulated, low, settings.crop, float(options["cons"]), float(options["edge"]), float(options["texture"]),
        int(options["seed"]),
    )), settings.crop


def _check_training_root(root: str, layout: str) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"data source root {root!r} is not a folder")
    held = HELD_OUT_NAMES & set(path.parts)
    if held:
        raise ValueError(f"data source {root!r} is the validation set {sorted(held)[0]}: training never reads it")
    if layout in HELD_OUT_LAYOUTS:
        raise ValueError(f"data source {root!r}: layout {layout!r} is a validation layout; training never reads it")
    return path


class ExampleSource:
    """Deterministic example ``index`` -> :class:`TrainingExample` over weighted sources.

    ``device`` is where a fixed (non-simulated) predictor runs; examples are CPU tensors.
    Training shards are opened here (their listing and first footer) and read lazily.
    """

    def __init__(self, sources: Sequence[SourceSpec], settings: ExampleSettings, device: str = "cpu") -> None:
        if not sources:
            raise ValueError("at least one data source is needed")
        self.sources = list(sources)
        self.settings = settings
        self.device = device
        weights = np.array([s.weight for s in self.sources], dtype=np.float64)
        if not np.all(weights >= 0) or weights.sum() <= 0:
            raise ValueError(f"data source weights must be >= 0 with a positive sum, got {weights.tolist()}")
        self._cum = np.cumsum(weights / weights.sum())
        self._simulated = is_simulated(settings.predictor)
        self._datasets: dict[int, Dataset] = {}
        self._shards: dict[int, Any] = {}
        for i, src in enumerate(self.sources):
            if src.kind not in SOURCE_KINDS:
                raise ValueError(f"data source {i}: kind must be one of {list(SOURCE_KINDS)}, got {src.kind!r}")
            if src.kind == "synthetic":
                continue
            if not src.root:
                raise ValueError(f"data source {i}: kind {src.kind!r} needs a root")
            if src.kind == "shards":
                from .shard_source import TrainingShards

                self._shards[i] = TrainingShards(
                    src.root, src.storage_options, prediction_space=src.prediction_space,
                    held_out=HELD_OUT_NAMES, held_out_layouts=HELD_OUT_LAYOUTS,
                )
                continue
            if src.kind == "unlabeled" and self._simulated:
                raise ValueError(
                    f"data source {i} ({src.root!r}) is unlabeled: it needs a real predictor "
                    "(the simulated one corrupts ground truth)"
                )
            path = _check_training_root(src.root, src.layout)
            ds = open_dataset(path, src.layout)
            if ds.layout in HELD_OUT_LAYOUTS:
                raise ValueError(f"data source {src.root!r} has layout {ds.layout!r}, a validation layout")
            if len(ds) == 0:
                raise ValueError(f"data source {src.root!r} holds no samples")
            self._datasets[i] = ds
        self._predictor: Predictor | None = None
        self._dataset_item = functools.lru_cache(maxsize=32)(self._load_item)

    def _fixed_predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = get_predictor(self.settings.predictor, self.device)
        return self._predictor

    def _load_item(self, source: int, index: int) -> tuple[np.ndarray, np.ndarray | None, str, str]:
        sample = self._datasets[source][index]
        if self.sources[source].kind == "unlabeled":
            return sample.image(), None, "depth", sample.name
        if sample.gt is None:
            raise ValueError(f"{sample.name} in {self.sources[source].root!r} has no ground truth")
        return sample.image(), sample.gt, sample.gt_kind, sample.name

    def _pick(self, rng: np.random.Generator) -> int:
        source = int(np.searchsorted(self._cum, rng.random(), side="right"))
        return min(source, len(self.sources) - 1)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([int(self.settings.seed) & 0xFFFFFFFF, int(index)])

    def kind_of(self, index: int) -> str:
        """The kind of the source example ``index`` comes from (draws nothing else)."""
        return self.sources[self._pick(self._rng(index))].kind

    def fingerprint(self) -> list[dict[str, Any]]:
        """What the training shards hold (per ``shards`` source; others are not listed):
        checkpoints record it and a resumed run must find the same rows."""
        return [{"source": i, **shards.fingerprint()} for i, shards in sorted(self._shards.items())]

    def example(self, index: int, origin: bool = False) -> TrainingExample:
        """Example ``index``; ``origin=True`` attaches its :class:`CropOrigin` (for a
        training-shard row: decodes its stored image; needs a real predictor)."""
        s = self.settings
        rng = self._rng(index)
        source = self._pick(rng)
        spec = self.sources[source]
        if spec.kind == "shards":
            return self._shard_example(source, rng, origin)
        if spec.kind == "synthetic":
            scene_seed = int(rng.integers(0, VALIDATION_SEED_BASE))
            scene = make_scene(spec.size[0], spec.size[1], seed=scene_seed)
            image, gt, gt_kind, name = scene.rgb, scene.depth, "depth", f"synthetic-{scene_seed}"
        else:
            item = int(rng.integers(0, len(self._datasets[source])))
            image, gt, gt_kind, name = self._dataset_item(source, item)
        simulated: str | None = None
        if self._simulated:
            n = s.noise
            cons, edge, texture = rng.uniform(*n.cons), rng.uniform(*n.edge), rng.uniform(*n.texture)
            seed = int(rng.integers(0, 2**31))
            if n.clean > 0 and rng.random() < n.clean:
                cons = edge = texture = 0.0
            simulated = simulated_spec(s.predictor, s.low_res, s.high_res, cons, edge, texture, seed)
            predictor = get_predictor(simulated)
            if n.mixed > 0 and rng.random() < n.mixed:
                other = simulated_spec(s.predictor, s.low_res, s.high_res, rng.uniform(*n.cons), edge,
                                       rng.uniform(*n.texture), int(rng.integers(0, 2**31)))
                predictor = MixedNoisePredictor(predictor, get_predictor(other), int(rng.integers(0, 2**31)))
            if n.sharp_low > 0 and rng.random() < n.sharp_low:
                predictor = sharp_low_predictor(predictor, s, rng)
        else:
            predictor = self._fixed_predictor()
        windows = crop_window_predictor(s, predictor, simulated) if origin else None
        return make_example(
            image, gt, gt_kind, predictor, rng, name=name, low_res=s.low_res, high_res=s.high_res,
            crop=s.crop, crop_scale=s.crop_scale, flip=s.flip, window_predictor=windows,
        )

    def _shard_example(self, source: int, rng: np.random.Generator, origin: bool) -> TrainingExample:
        s = self.settings
        shards = self._shards[source]
        row = shards.row(int(rng.integers(0, len(shards))), image=origin)
        example, box, flipped = make_stored_example(
            row.low, row.high, row.gs, OutputKind(row.space), rng, name=row.name, crop=s.crop,
            crop_scale=s.crop_scale, flip=s.flip,
        )
        if not origin:
            return example
        if self._simulated:
            raise ValueError(
                f"{row.where}: relabelling a training-shard crop predicts its windows again from the image, "
                "which needs a real predictor (the simulated one needs ground truth)"
            )
        from ..pipelines.stage import decode_image

        image = decode_image(row.image, row.where)
        if row.size is not None and tuple(image.shape[:2]) != row.size:
            raise ValueError(f"{row.where}: the stored image is {image.shape[1]}x{image.shape[0]}, "
                             f"the row says {row.size[1]}x{row.size[0]}")
        windows = crop_window_predictor(s, self._fixed_predictor(), None)
        return replace(example, origin=crop_origin(image, None, "depth", box, flipped, row.name, *windows))

    def batch(self, indices: Sequence[int]) -> Batch:
        """Stacked examples; made with one torch thread (their ops are too small to
        parallelise, and thread wake-ups cost more than the work on a busy CPU)."""
        with single_thread():
            return stack([self.example(i) for i in indices])


def validation_scenes(count: int, size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Held-out synthetic scenes (seeds ``VALIDATION_SEED_BASE + i``): (rgb, depth, name)."""
    out = []
    for i in range(count):
        seed = VALIDATION_SEED_BASE + i
        scene = make_scene(size[0], size[1], seed=seed)
        out.append((scene.rgb, scene.depth, f"validation-{i}"))
    return out
