"""Pinhole intrinsics: from a JSON file, a 3x3 K, a COLMAP camera or dataset metadata.

Pixel convention (OpenCV, Open3D, this package): the centre of pixel (row v, column u)
is at image coordinates (u, v), so a centred principal point of a W x H image is
``((W - 1) / 2, (H - 1) / 2)``. COLMAP, nerfstudio and instant-ngp put pixel centres at
``(u + 0.5, v + 0.5)``; their principal points are shifted by -0.5 on the way in.

Scaling rule: intrinsics measured for a W x H image and used with an h x w depth map
(the same view, resized) become ``fx * w/W``, ``fy * h/H``, ``(cx + 0.5) * w/W - 0.5``,
``(cy + 0.5) * h/H - 0.5``. When the intrinsics carry no image size they are taken to
describe the depth map as it is; a principal point outside that map is refused (it
means the intrinsics belong to another resolution: add ``width``/``height``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


class IntrinsicsError(ValueError):
    """Intrinsics could not be read or do not fit the depth map they are used with."""


def finite_3x3(value: Any, what: str, error: type[Exception] = IntrinsicsError) -> np.ndarray:
    """``value`` (nested lists or an array) as a finite 3x3 float64 matrix, else ``error``
    naming ``what``."""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} must be numeric ({exc})") from exc
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
        raise error(f"{what} must be a finite 3x3 matrix, got shape {matrix.shape}")
    return matrix


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in the integer-pixel-centre convention, optionally with the
    ``width`` x ``height`` of the image they were measured for."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise IntrinsicsError(f"intrinsics must be finite numbers, got fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy}")
        if self.fx <= 0 or self.fy <= 0:
            raise IntrinsicsError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")
        if (self.width is None) != (self.height is None):
            raise IntrinsicsError("give both width and height, or neither")
        if self.width is not None and (self.width <= 0 or self.height <= 0):  # type: ignore[operator]
            raise IntrinsicsError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def K(self) -> np.ndarray:
        """The 3x3 float64 calibration matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_matrix(cls, K: Any, width: int | None = None, height: int | None = None) -> "Intrinsics":
        """From a 3x3 K (zero skew) in the integer-pixel-centre convention."""
        M = finite_3x3(K, "K", IntrinsicsError)
        if abs(M[0, 1]) > 1e-9 * abs(M[0, 0]) or not np.allclose(M[2], [0, 0, 1]) or M[1, 0] or M[0, 0] == 0:
            raise IntrinsicsError(f"K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {M.tolist()}")
        return cls(float(M[0, 0]), float(M[1, 1]), float(M[0, 2]), float(M[1, 2]), width, height)

    def for_size(self, height: int, width: int) -> "Intrinsics":
        """These intrinsics for an ``height`` x ``width`` map of the same view (see the
        module's scaling rule); raises :class:`IntrinsicsError` when they cannot apply."""
        if self.width is None or self.height is None:
            if not (-0.5 <= self.cx <= width - 0.5 and -0.5 <= self.cy <= height - 0.5):
                raise IntrinsicsError(
                    f"principal point ({self.cx:g}, {self.cy:g}) lies outside the {width}x{height} depth map: "
                    "these intrinsics belong to another resolution; add the image's \"width\" and \"height\" "
                    "to the intrinsics so they can be scaled"
                )
            return replace(self, width=width, height=height)
        if (self.width, self.height) == (width, height):
            return self
        sx, sy = width / self.width, height / self.height
        if abs(sx / sy - 1) > 0.02:
            raise IntrinsicsError(
                f"intrinsics are for {self.width}x{self.height} but the depth map is {width}x{height}: "
                f"the aspect ratio differs ({sx:.3f} vs {sy:.3f} scale), so it is a crop, not a resize"
            )
        return Intrinsics(
            self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, width, height
        )

    def to_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}
        if self.width is not None:
            out.update(width=int(self.width), height=int(self.height))  # type: ignore[arg-type]
        return out


def parse_intrinsics(data: Any, where: str = "intrinsics") -> Intrinsics:
    """Intrinsics from a parsed JSON object.

    Accepted: ``{"fx", "fy", "cx", "cy"}`` or ``{"K": 3x3}``, each with optional
    ``"width"``/``"height"`` (the image size they were measured for) and optional
    ``"pixel_center": "integer"`` (default) or ``"half"`` (COLMAP/NeRF convention).
    """
    if not isinstance(data, dict):
        raise IntrinsicsError(f"{where}: expected a JSON object, got {type(data).__name__}")
    size: dict[str, int] = {}
    for key in ("width", "height"):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise IntrinsicsError(f"{where}: {key!r} must be an integer, got {value!r}")
            size[key] = int(value)
    centre = data.get("pixel_center", "integer")
    if centre not in ("integer", "half"):
        raise IntrinsicsError(f"{where}: 'pixel_center' must be 'integer' or 'half', got {centre!r}")
    try:
        if "K" in data:
            intr = Intrinsics.from_matrix(data["K"], size.get("width"), size.get("height"))
        elif all(k in data for k in ("fx", "fy", "cx", "cy")):
            fx, fy, cx, cy = (data[k] for k in ("fx", "fy", "cx", "cy"))
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (fx, fy, cx, cy)):
                raise IntrinsicsError("fx, fy, cx, cy must be numbers")
            intr = Intrinsics(float(fx), float(fy), float(cx), float(cy), size.get("width"), size.get("height"))
        else:
            raise IntrinsicsError('expected {"fx", "fy", "cx", "cy"} or {"K": 3x3}, optionally with "width" and "height"')
    except IntrinsicsError as exc:
        raise IntrinsicsError(f"{where}: {exc}") from None
    if centre == "half":
        intr = replace(intr, cx=intr.cx - 0.5, cy=intr.cy - 0.5)
    return intr


def load_intrinsics(path: str | Path) -> Intrinsics:
    """Read an intrinsics JSON file (formats in :func:`parse_intrinsics`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntrinsicsError(f"intrinsics file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntrinsicsError(f"cannot read intrinsics file {path}: {exc}") from None
    return parse_intrinsics(data, str(path))


def intrinsics_from_colmap(camera: Any) -> Intrinsics:
    """Intrinsics of an undistorted ``pycolmap.Camera`` (SIMPLE_PINHOLE or PINHOLE).

    Distorted models are refused: undistort first (``pycolmap.undistort_images``, as
    :func:`sddr_pipeline.plugins.colmap.run_colmap` does).
    """
    model = str(getattr(camera.model, "name", camera.model))
    if model not in PINHOLE_MODELS:
        raise IntrinsicsError(
            f"COLMAP camera {camera.camera_id} uses the distorted model {model}; undistort the images first "
            "(pycolmap.undistort_images / colmap image_undistorter) to get a PINHOLE camera"
        )
    return Intrinsics(
        float(camera.focal_length_x),
        float(camera.focal_length_y),
        float(camera.principal_point_x) - 0.5,
        float(camera.principal_point_y) - 0.5,
        int(camera.width),
        int(camera.height),
    )


def intrinsics_from_sample(sample: Any) -> Intrinsics:
    """Intrinsics a dataset sample carries (``sample.intrinsics``, a 3x3 K of its full image)."""
    K = getattr(sample, "intrinsics", None)
    if K is None:
        raise IntrinsicsError(f"sample {getattr(sample, 'name', '?')!r} has no intrinsics; pass an intrinsics file")
    from ..data.images import image_size

    height, width = image_size(sample.image_path)
    return Intrinsics.from_matrix(K, width, height)
