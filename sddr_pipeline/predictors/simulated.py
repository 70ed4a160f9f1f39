"""``simulated[:key=value,...]``: the paper's noise model applied to ground truth.

No pretrained depth weights can be downloaded here, so quality work runs SDDR on a
"predictor" that corrupts the ground truth the way the paper describes real predictors:
at LOW resolution the map is consistent but its edges are blurred, displaced or missing
(eps_edge); at HIGH resolution edges are sharp but regions are locally inconsistent and
RGB texture leaks in (eps_cons).

Regime rule: a call at resolution ``r <= sqrt(low * high)`` produces the LOW noise,
otherwise the HIGH noise. The output is always at ``working_size(h, w, r)``.

Options (after ``:`` or ``;``): ``low`` (int, 384), ``high`` (int, 1024), ``cons``
(0-0.5, 0.15), ``edge`` (0-8 px, 2), ``texture`` (0-1, 0.3), ``seed`` (int, 0).
``default_resolutions = (low, high)``.

Noise model, applied to the ground-truth disparity ``g`` (1/depth when the gt is depth;
invalid pixels filled from the nearest valid one; min/max-normalised to [0, 1], a
constant gt becomes all ones), output relative disparity:

* LOW: ``g`` area-downsampled to the working size (bilinear where it must upsample), so
  thin structures fade; Gaussian blur of sigma ``edge`` px; then warped by a smooth
  random displacement field (three random plane waves of 0.5-2 cycles per long side per
  axis) scaled so that its largest displacement is exactly ``edge / 2`` px (resampled
  with linear interpolation). A step edge's 10-90 % rise is thus ~2.56 ``edge`` px wide.
* HIGH: ``g`` resized to the working size, times ``exp(R(x) + f(x))`` (additive in log):
  ``R`` takes a value ``d_r ~ N(0, cons^2)`` on each of 16 Voronoi cells of random seeds,
  feathered across cell borders by a Gaussian of sigma 2 % of the long side (so cell
  cores keep exactly ``d_r``: ``std(log(high / g))`` across cells is ``cons``); ``f`` is
  a smooth field of three random plane waves of 0.25-0.75 cycles per long side with
  (ensemble) standard deviation ``cons / 2``. Then ``texture * std(map) * t`` is added,
  ``t`` being the unit-variance luminance high-pass of the image (luminance minus its
  Gaussian blur of sigma 2 px, divided by its std; zero for a flat image). Finally the
  map is clipped at 0.

Randomness comes from numpy ``default_rng`` seeded by the sha256 of (seed, context name,
crop box or the full-image box, regime): asking for the same window twice gives the
same map, a different window gets a new, independent inconsistency, as with a real
predictor; all random geometry is drawn in frame-relative units so one window at two
HIGH resolutions breaks the same way.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt, gaussian_filter, map_coordinates

from ..registry import PREDICTORS
from .base import (
    BasePredictor,
    OutputKind,
    PredictorError,
    PredictorSpec,
    SampleContext,
    check_image,
    check_output,
    parse_options,
    working_size,
)
from .common import check_options, resize_image

N_REGIONS = 16
FEATHER = 0.02
FIELD_CYCLES = (0.25, 0.75)
WARP_CYCLES = (0.5, 2.0)
N_WAVES = 3
HIGHPASS_SIGMA = 2.0

DEFAULTS: dict[str, float] = {"low": 384, "high": 1024, "cons": 0.15, "edge": 2.0, "texture": 0.3, "seed": 0}
RANGES: dict[str, tuple[float, float]] = {
    "low": (1, math.inf),
    "high": (1, math.inf),
    "cons": (0.0, 0.5),
    "edge": (0.0, 8.0),
    "texture": (0.0, 1.0),
    "seed": (-math.inf, math.inf),
}
INTEGER_OPTIONS = frozenset({"low", "high", "seed"})


def gt_disparity(gt: np.ndarray, gt_kind: str = "depth") -> np.ndarray:
    """Ground truth -> disparity in [0, 1]: invalid pixels (0, <0, NaN, inf) take the
    value of the nearest valid pixel; a constant map becomes all ones."""
    arr = np.asarray(gt, dtype=np.float64)
    if arr.ndim != 2:
        raise PredictorError(f"simulated: ground truth must be a 2-D map, got shape {arr.shape}")
    valid = np.isfinite(arr) & (arr > 0)
    if not valid.any():
        raise PredictorError("simulated: the ground truth has no valid pixel (all 0, negative, NaN or inf)")
    disp = np.where(valid, arr, 1.0)
    if gt_kind == "depth":
        disp = 1.0 / disp
    if not valid.all():
        index = distance_transform_edt(~valid, return_distances=False, return_indices=True)
        disp = disp[tuple(index)]
    lo, hi = float(disp.min()), float(disp.max())
    if hi - lo <= 1e-12 * max(abs(hi), 1e-30):
        return np.ones_like(disp)
    return (disp - lo) / (hi - lo)


def resize_map(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average to a smaller ``size`` = (h, w); bilinear when either side grows."""
    if arr.shape == tuple(size):
        return np.array(arr, dtype=np.float64)
    shrink = size[0] <= arr.shape[0] and size[1] <= arr.shape[1]
    image = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))
    resized = image.resize((size[1], size[0]), resample=Image.BOX if shrink else Image.BILINEAR)
    return np.asarray(resized, dtype=np.float64)


def noise_rng(seed: int, name: str, box: tuple[int, int, int, int], regime: str) -> np.random.Generator:
    """A generator seeded by a stable hash of what identifies one prediction."""
    key = json.dumps([int(seed), str(name), [int(v) for v in box], regime]).encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:16], "little"))


def random_waves(shape: tuple[int, int], rng: np.random.Generator, cycles: tuple[float, float]) -> np.ndarray:
    """A smooth field of unit ensemble variance: ``N_WAVES`` plane waves with random
    direction and phase and ``cycles`` cycles per long side."""
    h, w = shape
    side = max(h, w)
    y = (np.arange(h) + 0.5)[:, None] / side
    x = (np.arange(w) + 0.5)[None, :] / side
    field = np.zeros(shape)
    for _ in range(N_WAVES):
        freq = rng.uniform(*cycles)
        theta, phase = rng.uniform(0, 2 * np.pi, size=2)
        field += np.cos(2 * np.pi * freq * (np.cos(theta) * x + np.sin(theta) * y) + phase)
    return field * math.sqrt(2 / N_WAVES)


def voronoi_labels(shape: tuple[int, int], rng: np.random.Generator, n: int = N_REGIONS) -> np.ndarray:
    """Label map of the Voronoi cells of ``n`` seeds drawn uniformly in the frame."""
    h, w = shape
    seeds = rng.uniform(size=(n, 2)) * (h, w)
    dy2 = ((np.arange(h) + 0.5)[None, :] - seeds[:, :1]) ** 2
    dx2 = ((np.arange(w) + 0.5)[None, :] - seeds[:, 1:]) ** 2
    labels = np.zeros((h, w), dtype=np.intp)
    best = dy2[0][:, None] + dx2[0][None, :]
    for k in range(1, n):  # separable squared distances: one pass per seed, no k-d tree
        d = dy2[k][:, None] + dx2[k][None, :]
        nearer = d < best
        labels[nearer] = k
        np.minimum(best, d, out=best)
    return labels


@dataclass(frozen=True)
class HighNoise:
    """The multiplicative HIGH-regime error ``exp(log_factor)`` and how it was made."""

    labels: np.ndarray
    region_values: np.ndarray
    log_factor: np.ndarray


def draw_high_noise(shape: tuple[int, int], rng: np.random.Generator, cons: float) -> HighNoise:
    labels = voronoi_labels(shape, rng)
    values = rng.normal(0.0, cons, size=N_REGIONS)
    regional = gaussian_filter(values[labels], FEATHER * max(shape), mode="nearest")
    field = (cons / 2) * random_waves(shape, rng, FIELD_CYCLES)
    return HighNoise(labels=labels, region_values=values, log_factor=regional + field)


def luminance_highpass(image: np.ndarray, sigma: float = HIGHPASS_SIGMA) -> np.ndarray:
    """Unit-variance high-pass of an RGB image's luminance (zero for a flat image)."""
    lum = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    hp = lum - gaussian_filter(lum, sigma, mode="nearest")
    std = float(hp.std())
    return hp / std if std > 1e-9 else np.zeros_like(hp)


def simulate_low(disp: np.ndarray, size: tuple[int, int], rng: np.random.Generator, edge: float) -> np.ndarray:
    """LOW regime: area-downsample, blur by ``edge`` px, displace edges by <= ``edge/2`` px."""
    out = resize_map(disp, size)
    if edge <= 0:
        return out
    out = gaussian_filter(out, edge, mode="nearest")
    dy = random_waves(size, rng, WARP_CYCLES)
    dx = random_waves(size, rng, WARP_CYCLES)
    peak = float(np.hypot(dy, dx).max())
    gain = (edge / 2) / peak if peak > 0 else 0.0
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    return map_coordinates(out, [yy + gain * dy, xx + gain * dx], order=1, mode="nearest")


def simulate_high(
    disp: np.ndarray, image: np.ndarray, rng: np.random.Generator, cons: float, texture: float
) -> np.ndarray:
    """HIGH regime at the size of ``image`` (already at working size): regional and smooth
    multiplicative inconsistency, then texture copied from the image."""
    size = image.shape[:2]
    out = resize_map(disp, size) * np.exp(draw_high_noise(size, rng, cons).log_factor)
    if texture > 0:
        out = out + texture * out.std() * luminance_highpass(image)
    return np.clip(out, 0.0, None)


def parse_settings(options: dict[str, str]) -> dict[str, float]:
    """Validate ``simulated`` options against :data:`DEFAULTS` / :data:`RANGES`."""
    check_options(options, frozenset(DEFAULTS), "simulated")
    settings = dict(DEFAULTS)
    for key, text in options.items():
        try:
            value = int(text) if key in INTEGER_OPTIONS else float(text)
        except ValueError:
            kind = "an integer" if key in INTEGER_OPTIONS else "a number"
            raise PredictorError(f"simulated: option {key}={text!r} must be {kind}") from None
        lo, hi = RANGES[key]
        if not lo <= value <= hi:
            raise PredictorError(f"simulated: option {key}={text} is out of range [{lo:g}, {hi:g}]")
        settings[key] = value
    if settings["low"] > settings["high"]:
        raise PredictorError(f"simulated: low={settings['low']} must not exceed high={settings['high']}")
    return settings


class SimulatedPredictor(BasePredictor):
    """Ground truth corrupted by the paper's LOW / HIGH noise (see the module docstring)."""

    kind = OutputKind("disparity", metric=False)

    def __init__(self, options: dict[str, str]) -> None:
        s = parse_settings(options)
        self.low, self.high, self.seed = int(s["low"]), int(s["high"]), int(s["seed"])
        self.cons, self.edge, self.texture = float(s["cons"]), float(s["edge"]), float(s["texture"])
        self.default_resolutions = (self.low, self.high)
        self.name = (
            f"simulated:low={self.low},high={self.high},cons={self.cons:g},edge={self.edge:g},"
            f"texture={self.texture:g},seed={self.seed}"
        )

    def regime(self, resolution: int) -> str:
        return "low" if resolution <= math.sqrt(self.low * self.high) else "high"

    def predict(self, image: np.ndarray, resolution: int, context: SampleContext | None = None) -> np.ndarray:
        check_image(image)
        if context is None or context.gt is None:
            raise PredictorError("simulated needs ground truth; use a dataset with gt")
        h, w = image.shape[:2]
        gt = context.gt_crop()
        if gt is None or gt.ndim != 2 or gt.size == 0:
            raise PredictorError(f"simulated: ground truth for {context.name!r} must be a non-empty 2-D map")
        if abs(gt.shape[0] * w - gt.shape[1] * h) > 0.02 * gt.shape[1] * h:
            raise PredictorError(
                f"simulated: ground truth {gt.shape[0]}x{gt.shape[1]} does not match the image {h}x{w} "
                f"of {context.name!r} (crop {context.crop})"
            )
        disp = gt_disparity(gt, context.gt_kind)
        size = working_size(h, w, resolution)
        regime = self.regime(resolution)
        rng = noise_rng(self.seed, context.name, context.crop or (0, 0, h, w), regime)
        if regime == "low":
            out = simulate_low(disp, size, rng, self.edge)
        else:
            out = simulate_high(disp, resize_image(image, size), rng, self.cons, self.texture)
        return check_output(out, self.name)


@PREDICTORS.register("simulated")
def from_spec(spec: PredictorSpec, device: str) -> SimulatedPredictor:
    options = parse_options(spec.arg or "")
    for key in set(options) & set(spec.options):
        if options[key] != spec.options[key]:
            raise PredictorError(f"simulated: option {key} given twice with different values")
    return SimulatedPredictor({**options, **spec.options})
