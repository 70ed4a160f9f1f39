"""What a refinement returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..predictors.base import OutputKind

if TYPE_CHECKING:
    from .options import RefineOptions


class NonFiniteResultError(RuntimeError):
    """Refinement produced NaN or inf pixels (e.g. non-finite weights): never a result."""


def check_finite_result(**maps: np.ndarray) -> None:
    """Raise :class:`NonFiniteResultError` naming each map of ``maps`` with NaN/inf pixels."""
    bad = {name: int(np.size(m) - np.count_nonzero(np.isfinite(m))) for name, m in maps.items()}
    bad = {name: n for name, n in bad.items() if n}
    if bad:
        counts = ", ".join(f"{name} {n} of {np.size(maps[name])}" for name, n in bad.items())
        raise NonFiniteResultError(f"refinement gave non-finite pixels ({counts}); check the refiner weights")


@dataclass(frozen=True)
class ScaleReference:
    """Sparse metric depths (e.g. SfM points) used to bring a relative map to metres.

    ``points`` is an Nx2 array of (row, col) pixel coordinates in the full image and
    ``depth`` the N metric depths there.
    """

    points: np.ndarray
    depth: np.ndarray

    def __post_init__(self) -> None:
        pts = np.asarray(self.points)
        d = np.asarray(self.depth)
        if pts.ndim != 2 or pts.shape[1] != 2 or d.shape != (pts.shape[0],):
            raise ValueError(f"scale reference needs Nx2 points and N depths, got {pts.shape} and {d.shape}")


@dataclass
class RefineResult:
    """A refined depth map and what it means.

    ``depth`` is float32 at the input image's size, in ``space`` ("disparity" or "depth")
    and metric units when ``metric`` (metres, or 1/metres for disparity), otherwise in
    the predictor's relative units (its scale and shift fitted to the consistent
    low-resolution prediction). ``scale_source`` says where the scale came from:
    ``"predictor"`` (relative), ``"metric-predictor"`` or ``"reference"``.
    ``normalized`` is the refined disparity-like map in the refiner's [0, 1] space,
    ``omega`` where detail was taken from the high-resolution prediction, ``edges`` the
    edge representation G of the result (None when not requested); ``low``/``high`` are the
    raw predictions at their working resolutions, ``kind`` the predictor's output kind
    (the space and polarity of ``low``/``high``, whatever ``space`` the result was brought
    to), and ``low_disp``/``high_disp`` those predictions made disparity-like exactly as
    the refiner saw them (before normalisation), at the same working sizes.
    ``confidence`` is the per-pixel confidence in [0, 1] when it was asked for
    (:mod:`sddr_pipeline.confidence`); ``one_stage`` a two-stage result's step-0 result
    when it was asked for; ``options`` the resolved options the result was made with.
    """

    depth: np.ndarray
    space: str
    metric: bool
    scale_source: str
    normalized: np.ndarray
    omega: np.ndarray
    edges: np.ndarray | None
    low: np.ndarray
    high: np.ndarray
    mode: str
    steps: int = 0
    alignment: tuple[float, float] = (1.0, 0.0)
    timings: dict[str, float] = field(default_factory=dict)
    edge_history: list[np.ndarray] = field(default_factory=list)
    kind: OutputKind | None = None
    low_disp: np.ndarray | None = None
    high_disp: np.ndarray | None = None
    confidence: np.ndarray | None = None
    one_stage: RefineResult | None = None
    options: RefineOptions | None = None

    def describe(self) -> str:
        units = "metric" if self.metric else "relative"
        return f"{units} {self.space} ({self.scale_source})"
