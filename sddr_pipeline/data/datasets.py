"""Dataset readers: one :class:`Sample` per image, with ground truth in a declared unit.

:func:`open_dataset` recognises the layouts below (``layout="auto"`` tries them in this
order; pass a name to override detection):

- ``middlebury2014``: scene folders with ``im0.png``, ``calib.txt`` and (optional)
  ``disp0GT.pfm``; gt is DEPTH IN METRES, ``baseline * f / (disp + doffs) / 1000``.
- ``kitti`` / ``nyu``: ``test_annotations.json`` listing ``rgb``, ``depth`` (uint16 PNG,
  metres = value / ``depth_scale``: 256 for KITTI, 1000 for NYU) and ``cam_in`` = fx, fy, cx, cy.
- ``rgbd_sequence``: ``color/`` + ``depth/`` (uint16 mm), PrimeSense intrinsics and, when a
  Redwood ``trajectory.log`` is present, camera-to-world poses in ``meta["pose"]``.
- ``generic``: ``rgb/<name>.<ext>``, ``gt/<name>.npy``, ``dataset.json`` declaring ``gt_kind``.
- ``middlebury2005_2006``: scene folders with 8-bit disparity PNG/PGM (relative evaluation).
- ``images``: any folder of images, no ground truth.

Ground truth is always float32 HxW at the image's resolution with 0 marking invalid pixels.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from ..geometry.intrinsics import finite_3x3
from ..predictors.base import SampleContext
from .images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    image_size,
    read_depth_png16,
    read_gray8,
    read_image,
    read_pfm,
)

GtKind = Literal["depth", "disparity"]

LAYOUTS: tuple[str, ...] = (
    "middlebury2014",
    "kitti",
    "nyu",
    "rgbd_sequence",
    "generic",
    "middlebury2005_2006",
    "images",
)

PRIMESENSE_INTRINSICS = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
"""Default PrimeSense/Kinect K (640x480) that Redwood and Open3D use for these sequences."""

ANNOTATION_FILE = "test_annotations.json"


class DatasetError(ValueError):
    """A dataset folder could not be understood; the message names the file or folder and why."""


def _as_intrinsics(value: Any, where: str) -> np.ndarray:
    """A 3x3 float64 K from a 3x3 nested list/array, or fail naming ``where``."""
    return finite_3x3(value, f"{where}: intrinsics", DatasetError)


def intrinsics_from_fxfycxcy(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] as float64."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def clean_gt(gt: np.ndarray) -> np.ndarray:
    """float32 copy of ``gt`` with NaN, inf and negative values set to 0 (the invalid marker)."""
    out = np.array(gt, dtype=np.float32, copy=True)
    out[~np.isfinite(out) | (out < 0)] = 0.0
    return out


@dataclass
class Sample:
    """One image with its (optional) ground truth.

    ``name`` is the image's path relative to the dataset root, without extension, with
    POSIX separators (``"Adirondack/im0"``, ``"rgb/0000000050"``); the ``generic`` layout is
    the one exception: names are relative to ``rgb/`` because that layout keys ``gt/``,
    ``intrinsics/`` and ``dataset.json`` by them. ``gt`` is float32 HxW with 0 = invalid
    (NaN, inf and negatives are zeroed on construction), ``intrinsics`` a 3x3 float64 K of
    the full image. ``meta`` holds per-dataset facts: ``units``, ``scale_verified``, ...
    """

    name: str
    image_path: Path
    gt: np.ndarray | None = None
    gt_kind: GtKind = "depth"
    intrinsics: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        if self.gt_kind not in ("depth", "disparity"):
            raise DatasetError(f"sample {self.name}: gt_kind must be 'depth' or 'disparity', got {self.gt_kind!r}")
        if self.gt is not None:
            if np.ndim(self.gt) != 2:
                raise DatasetError(f"sample {self.name}: gt must be 2-D, got shape {np.shape(self.gt)}")
            self.gt = clean_gt(self.gt)
        if self.intrinsics is not None:
            self.intrinsics = _as_intrinsics(self.intrinsics, f"sample {self.name}")

    def image(self) -> np.ndarray:
        """The HxWx3 uint8 image, read from disk on each call (samples stay light)."""
        return read_image(self.image_path)

    def context(self) -> SampleContext:
        return SampleContext(name=self.name, gt=self.gt, gt_kind=self.gt_kind, intrinsics=self.intrinsics)


@dataclass(frozen=True)
class _Entry:
    """What a layout scanner knows about one sample before any pixel is read."""

    name: str
    image_path: Path
    gt_kind: GtKind = "depth"
    load_gt: Callable[[], np.ndarray] | None = None
    gt_source: Path | None = None
    intrinsics: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Dataset(Sequence[Sample]):
    """An ordered, read-only collection of samples (sorted by name); gt is loaded on indexing."""

    def __init__(self, root: Path, layout: str, entries: list[_Entry]) -> None:
        self.root = root
        self.layout = layout
        self._entries = sorted(entries, key=lambda e: e.name)
        self.names: list[str] = [e.name for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self._load(e) for e in self._entries[index]]
        return self._load(self._entries[index])

    def __iter__(self) -> Iterator[Sample]:
        for entry in self._entries:
            yield self._load(entry)

    def __repr__(self) -> str:
        return f"Dataset(root={str(self.root)!r}, layout={self.layout!r}, samples={len(self)})"

    def names_without_depth(self) -> list[str]:
        """Names of the samples with no ground-truth DEPTH map (none, or disparity), known
        without reading any pixel."""
        return [e.name for e in self._entries if e.load_gt is None or e.gt_kind != "depth"]

    @staticmethod
    def _load(entry: _Entry) -> Sample:
        gt = None
        if entry.load_gt is not None:
            gt = entry.load_gt()
            shape = image_size(entry.image_path)
            if gt.shape != shape:
                raise DatasetError(
                    f"ground truth {entry.gt_source} is {gt.shape[0]}x{gt.shape[1]} but image "
                    f"{entry.image_path} is {shape[0]}x{shape[1]}"
                )
        return Sample(
            name=entry.name,
            image_path=entry.image_path,
            gt=gt,
            gt_kind=entry.gt_kind,
            intrinsics=entry.intrinsics,
            meta=dict(entry.meta),
        )


def _stem_name(path: Path, base: Path) -> str:
    return path.relative_to(base).with_suffix("").as_posix()


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _iter_images(base: Path) -> Iterator[Path]:
    """Image files under ``base`` (recursive, sorted), skipping hidden files and folders."""
    for path in sorted(base.rglob("*")):
        if not any(part.startswith(".") for part in path.relative_to(base).parts) and _is_image(path):
            yield path


def _scan_images(base: Path) -> dict[str, Path]:
    """``{name: path}`` for every image under ``base``; two files with one name are an error."""
    found: dict[str, Path] = {}
    for path in _iter_images(base):
        name = _stem_name(path, base)
        if name in found:
            raise DatasetError(
                f"two images map to the sample name {name!r}: {found[name]} and {path}; rename one"
            )
        found[name] = path
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


# ----------------------------------------------------------------------------- images


def _images_entries(root: Path) -> list[_Entry]:
    images = _scan_images(root)
    if not images:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}")
    return [_Entry(name, path, meta={"scale_verified": True}) for name, path in images.items()]


# ---------------------------------------------------------------------------- generic


def _load_npy_gt(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"not a readable .npy array ({exc})") from exc
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ImageReadError(path, f"ground truth must be a 2-D numeric array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.float32)


def _generic_intrinsics_file(path: Path) -> np.ndarray:
    data = _read_json(path)
    if isinstance(data, dict) and "K" in data:
        return _as_intrinsics(data["K"], str(path))
    if isinstance(data, dict) and all(k in data for k in ("fx", "fy", "cx", "cy")):
        try:
            return intrinsics_from_fxfycxcy(*(float(data[k]) for k in ("fx", "fy", "cx", "cy")))
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: fx, fy, cx, cy must be numbers ({exc})") from exc
    raise DatasetError(f"{path}: expected {{'fx','fy','cx','cy'}} or {{'K': 3x3}}")


def _generic_entries(root: Path) -> list[_Entry]:
    rgb_dir, gt_dir, spec_path = root / "rgb", root / "gt", root / "dataset.json"
    if not rgb_dir.is_dir():
        raise DatasetError(f"generic layout needs an rgb/ folder in {root}")
    images = _scan_images(rgb_dir)
    gt_files = (
        {_stem_name(p, gt_dir): p for p in gt_dir.rglob("*.npy") if p.is_file()} if gt_dir.is_dir() else {}
    )
    spec: dict[str, Any] = {}
    if spec_path.exists():
        spec = _read_json(spec_path)
        if not isinstance(spec, dict):
            raise DatasetError(f"{spec_path}: expected a JSON object")
    elif gt_files:
        raise DatasetError(f"{root} has gt/ files but no dataset.json declaring gt_kind ('depth' or 'disparity')")
    gt_kind = spec.get("gt_kind", "depth")
    if gt_kind not in ("depth", "disparity"):
        raise DatasetError(f"{spec_path}: gt_kind must be 'depth' or 'disparity', got {gt_kind!r}")
    orphans = sorted(set(gt_files) - set(images))
    if orphans:
        raise DatasetError(f"{gt_dir}: ground truth without a matching rgb/ image: {orphans[:5]}")
    table = spec.get("intrinsics", {})
    if not isinstance(table, dict):
        raise DatasetError(f"{spec_path}: 'intrinsics' must map sample names to 3x3 matrices")
    unknown = sorted(set(table) - set(images))
    if unknown:
        raise DatasetError(f"{spec_path}: intrinsics given for names with no rgb/ image: {unknown[:5]}")
    entries = []
    for name, path in images.items():
        K = _as_intrinsics(table[name], f"{spec_path} [{name}]") if name in table else None
        k_file = root / "intrinsics" / f"{name}.json"
        if k_file.exists():
            if K is not None:
                raise DatasetError(f"intrinsics for {name!r} given twice: in {spec_path} and {k_file}")
            K = _generic_intrinsics_file(k_file)
        gt_path = gt_files.get(name)
        entries.append(
            _Entry(
                name,
                path,
                gt_kind=gt_kind,
                load_gt=(lambda p=gt_path: _load_npy_gt(p)) if gt_path is not None else None,
                gt_source=gt_path,
                intrinsics=K,
                meta={"units": spec.get("units", "m" if gt_kind == "depth" else "px"), "scale_verified": True},
            )
        )
    return entries


# --------------------------------------------------------------------- middlebury 2014


def parse_middlebury_calib(path: Path) -> dict[str, Any]:
    """``calib.txt`` as a dict: ``cam0``/``cam1`` 3x3 arrays, numbers as float (stray spaces stripped)."""
    calib: dict[str, Any] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    for line in lines:
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            continue
        try:
            if value.startswith("["):
                rows = [r.split() for r in value.strip("[]").split(";")]
                calib[key] = np.array([[float(x) for x in r] for r in rows], dtype=np.float64)
            else:
                calib[key] = float(value)
        except ValueError as exc:
            raise DatasetError(f"{path}: cannot parse {key}={value!r} ({exc})") from exc
    for required in ("cam0", "doffs", "baseline"):
        if required not in calib:
            raise DatasetError(f"{path}: missing '{required}'")
    if calib["cam0"].shape != (3, 3):
        raise DatasetError(f"{path}: cam0 must be a 3x3 matrix")
    return calib


def _middlebury2014_scenes(root: Path) -> list[Path]:
    return sorted(
        d for d in root.iterdir() if d.is_dir() and (d / "im0.png").is_file() and (d / "calib.txt").is_file()
    )


def _middlebury2014_entries(root: Path) -> list[_Entry]:
    scenes = _middlebury2014_scenes(root)
    if not scenes:
        raise DatasetError(f"no Middlebury 2014 scene folders (im0.png + calib.txt) in {root}")
    entries = []
    for scene in scenes:
        image_path, calib_path, disp_path = scene / "im0.png", scene / "calib.txt", scene / "disp0GT.pfm"
        calib = parse_middlebury_calib(calib_path)
        height, width = image_size(image_path)
        # calib.txt describes the resolution it was written for; rescale K and doffs to the image
        # we have (plain scaling, as Middlebury derives its Q/H calibs). disp0GT.pfm must have the
        # image's size, its values in image pixels (checked on load).
        sx = width / calib["width"] if "width" in calib else 1.0
        sy = height / calib["height"] if "height" in calib else sx
        if abs(sx - sy) > 0.01 * sx:
            raise DatasetError(
                f"{calib_path}: calib size {calib.get('width')}x{calib.get('height')} does not scale to "
                f"image {image_path} ({width}x{height}) with one factor"
            )
        cam = calib["cam0"]
        K = intrinsics_from_fxfycxcy(cam[0, 0] * sx, cam[1, 1] * sy, cam[0, 2] * sx, cam[1, 2] * sy)
        baseline_mm, doffs = float(calib["baseline"]), float(calib["doffs"]) * sx
        focal = float(K[0, 0])
        mask = scene / "mask0nocc.png"
        meta = {
            "units": "m",
            "scale_verified": True,
            "baseline_mm": baseline_mm,
            "doffs_px": doffs,
            "calib_scale": (sx, sy),
            "mask_nocc_path": mask if mask.is_file() else None,
        }
        has_gt = disp_path.is_file()
        load = None
        if has_gt:
            load = lambda d=disp_path, f=focal, b=baseline_mm, o=doffs: (  # noqa: E731
                middlebury_disparity_to_depth(read_pfm(d), f, b, o)
            )
        name = _stem_name(image_path, root)
        entries.append(_Entry(name, image_path, "depth", load, disp_path if has_gt else None, K, meta))
    return entries


def middlebury_disparity_to_depth(
    disp: np.ndarray, focal_px: float, baseline_mm: float, doffs_px: float
) -> np.ndarray:
    """Depth in METRES from Middlebury disparity: ``baseline * f / (disp + doffs) / 1000``.

    Disparity, focal length and doffs must be in the same pixel units (those of the image
    the disparity map belongs to). inf/NaN disparities and non-positive ``disp + doffs`` -> 0.
    """
    if disp.ndim != 2:
        raise DatasetError(f"Middlebury disparity must be 2-D, got shape {disp.shape}")
    disp = disp.astype(np.float64)
    denom = disp + doffs_px
    valid = np.isfinite(disp) & (denom > 0)
    depth = np.zeros(disp.shape, dtype=np.float32)
    depth[valid] = (baseline_mm * focal_px / denom[valid] / 1000.0).astype(np.float32)
    return depth


# ----------------------------------------------------------------- middlebury 2005/2006


@dataclass(frozen=True)
class _MiddleburyPattern:
    image: tuple[str, ...]
    disp: str
    scale: float
    collection: str
    verified: bool


# First matching pattern wins. 2001 scales (Tsukuba x16, others x8) are the customary ones
# but the shared data's README calls them unverified, so those scenes are flagged.
_MIDDLEBURY_OLD_PATTERNS = (
    _MiddleburyPattern(("view1.png",), "disp1.png", 3.0, "2005/2006 third-size", True),
    _MiddleburyPattern(("imL.png",), "disp2.png", 4.0, "2003 quarter-size", True),
    _MiddleburyPattern(("imL.png",), "truedisp.pgm", 16.0, "2001", False),
    _MiddleburyPattern(("imL.png", "im2.ppm"), "disp2.pgm", 8.0, "2001", False),
    _MiddleburyPattern(("im6.ppm",), "disp6.pgm", 8.0, "2001", False),
)


def _load_scaled_disparity(path: Path, scale: float) -> np.ndarray:
    return read_gray8(path).astype(np.float32) / np.float32(scale)


def _middlebury_old_match(scene: Path) -> tuple[Path, Path, _MiddleburyPattern] | None:
    for pattern in _MIDDLEBURY_OLD_PATTERNS:
        disp = scene / pattern.disp
        if not disp.is_file():
            continue
        for image_name in pattern.image:
            if (scene / image_name).is_file():
                return scene / image_name, disp, pattern
    return None


def _middlebury_old_entries(root: Path, include_unverified: bool) -> list[_Entry]:
    entries = []
    for scene in sorted(d for d in root.iterdir() if d.is_dir()):
        match = _middlebury_old_match(scene)
        if match is None or (not match[2].verified and not include_unverified):
            continue
        image_path, disp_path, pattern = match
        meta = {
            "units": "px",
            "disparity_scale": pattern.scale,
            "collection": pattern.collection,
            "scale_verified": pattern.verified,
        }
        load = lambda p=disp_path, s=pattern.scale: _load_scaled_disparity(p, s)
        entries.append(_Entry(_stem_name(image_path, root), image_path, "disparity", load, disp_path, None, meta))
    if not entries:
        raise DatasetError(
            f"no Middlebury 2005/2006 scenes in {root} (looked for view1.png+disp1.png, imL.png+disp2.png"
            + ("" if include_unverified else "; 2001 scenes are skipped unless include_unverified=True")
            + ")"
        )
    return entries


# ---------------------------------------------------------------------- kitti / nyu


_ANNOTATION_SCALES = {"kitti": 256.0, "nyu": 1000.0}


def _annotation_layout(root: Path) -> str | None:
    """``"kitti"``/``"nyu"`` from the annotations' depth_scale (or the folder name), else None."""
    data = _read_json(root / ANNOTATION_FILE)
    files = data.get("files") if isinstance(data, dict) else None
    scale = files[0].get("depth_scale") if files and isinstance(files[0], dict) else None
    for layout, expected in _ANNOTATION_SCALES.items():
        if scale is not None and float(scale) == expected:
            return layout
    lowered = root.name.lower()
    for layout in _ANNOTATION_SCALES:
        if layout in lowered:
            return layout
    return None


def _load_depth_png(path: Path, scale: float) -> np.ndarray:
    return read_depth_png16(path).astype(np.float32) / np.float32(scale)


def _annotation_entries(root: Path, layout: str) -> list[_Entry]:
    ann_path = root / ANNOTATION_FILE
    if not ann_path.is_file():
        raise DatasetError(f"{layout} layout needs {ann_path}")
    data = _read_json(ann_path)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not files:
        raise DatasetError(f"{ann_path}: expected {{'files': [...]}} with at least one entry")
    entries = []
    for i, item in enumerate(files):
        where = f"{ann_path} files[{i}]"
        if not isinstance(item, dict) or "rgb" not in item:
            raise DatasetError(f"{where}: each entry needs an 'rgb' path")
        image_path = root / item["rgb"]
        if not image_path.is_file():
            raise DatasetError(f"{where}: image {image_path} does not exist")
        K = None
        if "cam_in" in item:
            cam = item["cam_in"]
            if not isinstance(cam, list) or len(cam) != 4:
                raise DatasetError(f"{where}: cam_in must be [fx, fy, cx, cy]")
            K = intrinsics_from_fxfycxcy(*map(float, cam))
        scale = float(item.get("depth_scale", _ANNOTATION_SCALES[layout]))
        depth_path = root / item["depth"] if item.get("depth") else None
        if depth_path is not None and not depth_path.is_file():
            raise DatasetError(f"{where}: depth {depth_path} does not exist")
        load = (lambda p=depth_path, s=scale: _load_depth_png(p, s)) if depth_path is not None else None
        meta = {"units": "m", "depth_scale": scale, "scale_verified": True}
        entries.append(_Entry(_stem_name(image_path, root), image_path, "depth", load, depth_path, K, meta))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise DatasetError(f"{ann_path}: the same rgb file is listed twice")
    return entries


# ------------------------------------------------------------------- rgbd sequence


def read_redwood_log(path: Path) -> dict[int, np.ndarray]:
    """Redwood ``.log`` trajectory: ``{frame_id: 4x4 camera-to-world}`` (a line 'i j n', then 4 rows)."""
    try:
        rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if len(rows) % 5:
        raise DatasetError(f"{path}: {len(rows)} non-empty lines, expected blocks of 5 (header + 4x4)")
    poses: dict[int, np.ndarray] = {}
    for b in range(0, len(rows), 5):
        try:
            frame = int(rows[b][0])
            pose = np.array([[float(x) for x in r] for r in rows[b + 1 : b + 5]], dtype=np.float64)
        except (ValueError, IndexError) as exc:
            raise DatasetError(f"{path}: bad block at line {b + 1} ({exc})") from exc
        if pose.shape != (4, 4):
            raise DatasetError(f"{path}: block at line {b + 1} is not a 4x4 matrix")
        poses[frame] = pose
    return poses


def _rgbd_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(colour, depth) pairs in frame order: from ``rgbd.match`` when present, else by file stem."""
    match = root / "rgbd.match"
    if match.is_file():
        try:
            lines = match.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read {match}: {exc}") from exc
        pairs = []
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DatasetError(f"{match}:{n}: expected 'depth/<file> color/<file>'")
            pairs.append((root / parts[1], root / parts[0]))
        return pairs
    depths = {p.stem: p for p in (root / "depth").iterdir() if _is_image(p)}
    colours = sorted((p for p in (root / "color").iterdir() if _is_image(p)), key=lambda p: p.name)
    return [(c, depths[c.stem]) for c in colours if c.stem in depths]


def _rgbd_entries(root: Path) -> list[_Entry]:
    if not ((root / "color").is_dir() and (root / "depth").is_dir()):
        raise DatasetError(f"rgbd_sequence layout needs color/ and depth/ folders in {root}")
    pairs = _rgbd_pairs(root)
    if not pairs:
        raise DatasetError(f"no colour/depth pairs found in {root}")
    log = root / "trajectory.log"
    poses = read_redwood_log(log) if log.is_file() else {}
    if poses and sorted(poses) != list(range(len(pairs))):
        raise DatasetError(f"{log}: poses for frames {sorted(poses)[:3]}... do not match the {len(pairs)} frames")
    entries = []
    for i, (colour, depth) in enumerate(pairs):
        for p in (colour, depth):
            if not p.is_file():
                raise DatasetError(f"{root}: frame {i} file {p} does not exist")
        meta = {"units": "m", "frame": i, "pose": poses.get(i), "scale_verified": True}
        load = lambda p=depth: _load_depth_png(p, 1000.0)
        K = PRIMESENSE_INTRINSICS.copy()
        entries.append(_Entry(_stem_name(colour, root), colour, "depth", load, depth, K, meta))
    return entries


# --------------------------------------------------------------------- detection


def _has_middlebury_old(root: Path) -> bool:
    return any(d.is_dir() and _middlebury_old_match(d) is not None for d in root.iterdir())


def _has_images(root: Path) -> bool:
    return next(_iter_images(root), None) is not None


_DETECTORS: tuple[tuple[str, str, Callable[[Path], bool]], ...] = (
    ("middlebury2014", "scene folders with im0.png + calib.txt", lambda r: bool(_middlebury2014_scenes(r))),
    ("kitti/nyu", ANNOTATION_FILE, lambda r: (r / ANNOTATION_FILE).is_file()),
    ("rgbd_sequence", "color/ and depth/ folders", lambda r: (r / "color").is_dir() and (r / "depth").is_dir()),
    (
        "generic",
        "rgb/ with gt/ or dataset.json",
        lambda r: (r / "rgb").is_dir() and ((r / "gt").is_dir() or (r / "dataset.json").is_file()),
    ),
    ("middlebury2005_2006", "scene folders with view1.png+disp1.png, imL.png+disp2.png, ...", _has_middlebury_old),
    ("images", f"any image file ({', '.join(sorted(IMAGE_EXTENSIONS))})", _has_images),
)


def detect_layout(root: str | os.PathLike) -> str:
    """The first layout in :data:`LAYOUTS` order whose signature files exist under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    for layout, _, found in _DETECTORS:
        if found(root):
            if layout == "kitti/nyu":
                resolved = _annotation_layout(root)
                if resolved is None:
                    raise DatasetError(
                        f"{root / ANNOTATION_FILE}: cannot tell KITTI from NYU (depth_scale is neither 256 "
                        "nor 1000); pass layout='kitti' or layout='nyu'"
                    )
                return resolved
            return layout
    looked = "; ".join(f"{name}: {what}" for name, what, _ in _DETECTORS)
    raise DatasetError(f"no known dataset layout under {root}. Looked for {looked}. Pass layout=... to force one.")


def open_dataset(root: str | os.PathLike, layout: str = "auto", include_unverified: bool = False) -> Dataset:
    """Open the dataset at ``root`` (layout auto-detected unless given; see module docs).

    ``include_unverified`` keeps samples whose gt scale is not verified (the 2001 Middlebury
    scenes); they are dropped by default so quality figures only use trusted ground truth,
    and carry ``meta["scale_verified"] = False`` when kept.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)} or 'auto'")
    if layout == "images":
        entries = _images_entries(root)
    elif layout == "generic":
        entries = _generic_entries(root)
    elif layout == "middlebury2014":
        entries = _middlebury2014_entries(root)
    elif layout == "middlebury2005_2006":
        entries = _middlebury_old_entries(root, include_unverified)
    elif layout in ("kitti", "nyu"):
        entries = _annotation_entries(root, layout)
    else:
        entries = _rgbd_entries(root)
    return Dataset(root, layout, entries)
