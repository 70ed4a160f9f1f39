"""What a refinement is asked to do: one typed, validated options object.

:class:`RefineOptions` is the single description of a refinement (mode, resolutions,
coarse-to-fine knobs, local-range clamp, optional outputs) that every entry point builds
and passes on: the Python API, ``sddr refine``, the Ray stages, the evaluation runner and
the pseudo-label generator. Defaults that depend on the predictor (its preferred
resolutions) or on the refiner (its local-range clamp) are filled in ONE place,
:meth:`RefineOptions.resolved`. This module imports neither torch nor numpy, so configs
load without them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Mode = Literal["one-stage", "two-stage"]
MODES: tuple[str, ...] = ("one-stage", "two-stage")

DEFAULT_LOW_RES = 384
DEFAULT_HIGH_RES = 1024

#: Default local-range clamp radius as a fraction of the working map's long side (0
#: disables it); see :mod:`.range_clamp`. A refiner's own value wins (``range_clamp`` of
#: its config), so weights that need no clamp ship without one.
RANGE_CLAMP = 1.0 / 128


def check_range_clamp(fraction: float) -> float:
    """``fraction`` as a float in [0, 0.25], else ``ValueError``."""
    if isinstance(fraction, bool):
        raise ValueError(f"range_clamp must be a number, got {fraction!r}")
    value = float(fraction)
    if not 0.0 <= value <= 0.25:
        raise ValueError(f"range_clamp must be in [0, 0.25] (a fraction of the long side; 0 disables it), got {fraction!r}")
    return value


@dataclass(frozen=True)
class ResolutionPolicy:
    """Per-window working resolution from edge density.

    The image-wide threshold is the ``percentile`` of the edge map, so on average
    ``1 - percentile/100`` of pixels (6%) are above it; a window with relative density
    ``rho = density / 0.06`` gets ``base * clamp(sqrt(rho), lo, hi)`` px, rounded to
    ``multiple``: windows full of edges are predicted at up to ``hi`` x the base high
    resolution, flat ones at ``lo`` x (cheaper, and less texture to copy).
    """

    percentile: float = 94.0
    lo: float = 0.75
    hi: float = 1.25
    multiple: int = 32

    def resolution(self, base: int, density: float) -> int:
        expected = 1.0 - self.percentile / 100.0
        factor = min(max(math.sqrt(max(density, 0.0) / expected), self.lo), self.hi)
        return max(self.multiple, int(round(base * factor / self.multiple)) * self.multiple)


@dataclass(frozen=True)
class TwoStageConfig:
    """Knobs of the coarse-to-fine procedure (defaults follow the authors' released
    inference: 2 steps; 25% window overlap; resolution policy of :class:`ResolutionPolicy`).

    ``window_net_scale`` bounds the network's long side on a window of step s to
    ``max_side * window_net_scale / (s + 1)`` (rounded to 128, at least 128): each step
    then costs about ``window_net_scale**2`` one-stage passes instead of ``(s+1)**2``,
    while the window's own high-resolution prediction still guides the upsampling to
    the window's full size. ``None`` runs every window at the preset's ``max_side``.
    The window-resolution policy reads edge maps computed at ``policy_side`` px (long
    side) at most: densities need no more, and G at full size is computed once, at the end.
    A gated refiner's window output is brought back to the estimate's units exactly, by
    inverting the min-max normalisation of its estimate crop
    (:func:`~.two_stage.denormalize_like`): it is a mix of that crop and detail aligned to
    it, so a fit can only add error. The two settings below apply to the legacy residual
    refiner only: windows are aligned in the gradient domain after a Gaussian blur of
    ``align_sigma`` x the window's long side on both maps (see
    :func:`~.alignment.align_gradient_batch`). ``anchor_sigma`` > 0 (an extension of the
    paper; 0 disables it) additionally keeps the current estimate's low frequencies in
    each window: the window contributes only its detail above a Gaussian of
    ``anchor_sigma`` x the window's long side. On middlebury2014q with the simulated
    predictor it kept two-stage's ORD and REL at the one-stage level while improving D3R
    (measured while choosing the defaults). The local-range clamp is
    :attr:`RefineOptions.range_clamp`, for the windows as for one-stage.

    ``window_median`` (gated refiner): before a window is refined, its fresh HIGH
    prediction is replaced by the estimate crop plus the ``window_median`` x
    ``window_median`` median of their difference (1 = off). A window's LOW, the one-stage
    estimate, is already sharp, and the RGB texture of its new HIGH draw is what the
    network then took as detail: on rgbd_sequence_sample at 0.15/2/0.3 (seed 0) two-stage
    D3R fell from 1.66x one-stage's to 0.99x with 7, and with no texture in HIGH it is 0
    (docs/QUALITY_HISTORY.md, section 11). Depth steps are wide in the difference and pass
    the median; where HIGH equals the estimate the difference is 0 and nothing changes.
    """

    steps: int = 2
    overlap: float = 0.25
    policy: ResolutionPolicy = ResolutionPolicy()
    window_net_scale: float | None = 1.5
    policy_side: int = 512
    align_sigma: float = 0.03
    anchor_sigma: float = 0.05
    window_median: int = 7

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 5:
            raise ValueError(f"two-stage steps must be an integer between 1 and 5, got {self.steps!r}")
        if not 0.05 <= self.overlap < 0.75:
            raise ValueError(f"window overlap must be in [0.05, 0.75), got {self.overlap}")
        if self.window_net_scale is not None and not 0.25 <= self.window_net_scale <= 4:
            raise ValueError(f"window_net_scale must be in [0.25, 4] or None, got {self.window_net_scale}")
        k = self.window_median
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 15 or k % 2 == 0:
            raise ValueError(f"window_median must be an odd integer between 1 and 15, got {k!r}")

    def window_max_side(self, preset_max_side: int, step: int) -> int | None:
        """The network's long-side bound for the windows of ``step`` (see the class doc)."""
        if self.window_net_scale is None:
            return None
        side = preset_max_side * self.window_net_scale / (step + 1)
        return int(min(preset_max_side, max(128, round(side / 128) * 128)))


def two_stage_config(steps: int = 2, window_median: int | None = None) -> TwoStageConfig:
    """The :class:`TwoStageConfig` of the knobs the CLIs and pipeline stages expose
    (``window_median`` None keeps the class default); raises ValueError naming the bad one."""
    return TwoStageConfig(steps=steps, **({} if window_median is None else {"window_median": window_median}))


def _check_res(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer (pixels) or None, got {value!r}")


@dataclass(frozen=True)
class RefineOptions:
    """One refinement's settings.

    ``mode``: ``"one-stage"`` or ``"two-stage"`` (coarse-to-fine, configured by
    ``two_stage``). ``low_res``/``high_res``: the predictor's two working resolutions
    (long side, px); None = the predictor's preferred ones, else 384 / 1024.
    ``range_clamp``: local-range clamp radius (fraction of the working long side; 0 = the
    raw network output); None = the refiner's own value. ``edges``: compute the full-size
    edge map G (``result.edges``). ``confidence``: compute the per-pixel confidence map
    (``result.confidence``). ``keep_one_stage``: a two-stage result also carries its
    step-0 (one-stage) result, for comparisons that must not predict twice.
    """

    mode: Mode = "one-stage"
    low_res: int | None = None
    high_res: int | None = None
    two_stage: TwoStageConfig = field(default_factory=TwoStageConfig)
    range_clamp: float | None = None
    edges: bool = True
    confidence: bool = False
    keep_one_stage: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        _check_res("low_res", self.low_res)
        _check_res("high_res", self.high_res)
        if self.low_res is not None and self.high_res is not None and self.low_res > self.high_res:
            raise ValueError(f"low resolution ({self.low_res}) must not exceed high resolution ({self.high_res})")
        if not isinstance(self.two_stage, TwoStageConfig):
            raise ValueError(f"two_stage must be a TwoStageConfig, got {type(self.two_stage).__name__}")
        if self.range_clamp is not None:
            check_range_clamp(self.range_clamp)
        for name in ("edges", "confidence", "keep_one_stage"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def build(cls, options: "RefineOptions | None" = None, **changes: Any) -> "RefineOptions":
        """``options`` (default: all defaults) with ``changes`` applied; ``steps=N`` sets
        the two-stage step count. Unknown names are a ``TypeError`` naming them."""
        base = options if options is not None else cls()
        if "steps" in changes:
            steps = changes.pop("steps")
            changes["two_stage"] = replace(changes.get("two_stage", base.two_stage), steps=steps)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown refine option(s) {', '.join(unknown)} (known: {', '.join(sorted(known | {'steps'}))})")
        return replace(base, **changes) if changes else base

    @property
    def steps(self) -> int:
        """Coarse-to-fine steps run: 0 for one-stage."""
        return self.two_stage.steps if self.mode == "two-stage" else 0

    def resolved(self, predictor: Any, refiner: Any) -> "RefineOptions":
        """These options with every None default filled: resolutions from the predictor's
        ``default_resolutions`` (else 384 / 1024), the clamp from the refiner's config
        (``range_clamp``, else :data:`RANGE_CLAMP`)."""
        pref = getattr(predictor, "default_resolutions", None) or (DEFAULT_LOW_RES, DEFAULT_HIGH_RES)
        low = int(self.low_res or pref[0])
        high = int(self.high_res or pref[1])
        if low <= 0 or high <= 0:
            raise ValueError(f"resolutions must be positive, got low={low} high={high}")
        if low > high:
            raise ValueError(f"low resolution ({low}) must not exceed high resolution ({high})")
        return replace(self, low_res=low, high_res=high, range_clamp=self.clamp_for(refiner))

    def clamp_for(self, refiner: Any) -> float:
        """The local-range clamp to run ``refiner`` with: these options' own, else the
        refiner config's ``range_clamp``, else :data:`RANGE_CLAMP`."""
        clamp = self.range_clamp
        if clamp is None:
            clamp = getattr(getattr(refiner, "config", None), "range_clamp", RANGE_CLAMP)
        return check_range_clamp(clamp)

    def identity(self) -> dict[str, Any]:
        """What changes the refined maps, JSON-ready (for resumable outputs' settings);
        call on :meth:`resolved` options. The shape is that of manifests written before
        this class existed, so their outputs still resume."""
        identity: dict[str, Any] = {"mode": self.mode, "resolutions": {"low": self.low_res, "high": self.high_res}}
        if self.mode == "two-stage":
            identity["two_stage"] = {**asdict(self.two_stage), "range_clamp": self.range_clamp}
        else:
            identity["two_stage"] = None
            identity["range_clamp"] = self.range_clamp
        return identity
