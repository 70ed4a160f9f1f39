"""Depth supervision files for NeRF / Gaussian-splatting trainers from refined depth.

``export_nerf(TRANSFORMS_JSON, DEPTH_SOURCE, format=...)`` writes, for every frame of a
``transforms.json`` whose image has a refined map, depth in the layout a trainer reads:

* ``nerfstudio``: ``depth/<frame path>.png`` 16-bit, ``value * depth_unit_scale_factor``
  = depth (default 1e-3: millimetres), per-frame ``depth_file_path``, and the top-level
  ``depth_unit_scale_factor``, in a NEW ``transforms_depth.json`` beside the input
  (``ns-train ... --data transforms_depth.json``);
* ``instant-ngp``: 16-bit PNGs ``depth_ngp/<frame path>.png`` (its own folder: the unit
  differs from nerfstudio's, so both exports can sit side by side) with per-frame
  ``depth_path`` and a top-level ``integer_depth_scale`` (depth = value *
  integer_depth_scale; by default the largest depth / 65535, the finest step that fits),
  in its own NEW ``transforms_depth_ngp.json`` beside the input;
* ``3dgs``: ``depths/<stem>.png`` 16-bit INVERSE depth as the 3DGS loader for
  transforms.json scenes reads it (``1/depth = png / 512``), and ``depth_params.json``
  ``{stem: {"scale": 128, "offset": 0}}`` (the COLMAP-loader form of the same code,
  ``png / 2**16 * scale + offset``), in ``sparse/0/`` when the folder has a COLMAP model,
  else beside the transforms file. Train with ``-d depths``.

All depths are z-depths (along the optical axis) in the transforms' world units:
``DEPTH_SOURCE`` is an ``sddr refine`` output folder with METRIC maps (relative maps are
refused), an ``sddr colmap`` output folder (maps in the COLMAP model's units, as
nerfstudio's COLMAP conversion keeps them), or a mapping ``{name: HxW depth}``. When the
poses were rescaled (instant-ngp's ``colmap2nerf.py`` does), pass that factor as
``depth_scale``. Maps are resized (nearest) to each frame's image size. 0 = no depth.

With ``confidence`` a per-pixel WEIGHT map is written too, for a confidence-weighted
depth loss: ``confidence/<same path>.png``, 16-bit ``round(confidence * 65535)`` (0
wherever the depth PNG is 0), beside the depth folder (instant-ngp:
``confidence_ngp/``); nerfstudio / instant-ngp frames get a ``depth_confidence_path`` key (3DGS: ``depths_confidence/<stem>.png`` beside ``depths/``).
The maps come from the depth source: ``confidence/<name>.npy`` of ``sddr refine
--confidence`` or of ``sddr colmap``, or a mapping ``{name: HxW in [0, 1]}``.
:func:`read_confidence_png` decodes them.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Literal, Mapping

import numpy as np
from PIL import Image

from sddr_pipeline.geometry.cameras import parse_transforms
from sddr_pipeline.io.atomic import atomic_write_bytes, atomic_write_json
from sddr_pipeline.io.names import check_name

Format = Literal["nerfstudio", "instant-ngp", "3dgs"]
FORMATS: tuple[str, ...] = ("nerfstudio", "instant-ngp", "3dgs")
DEFAULT_OUTPUT: dict[str, str] = {"nerfstudio": "transforms_depth.json", "instant-ngp": "transforms_depth_ngp.json"}
"""Each format's default transforms file (beside the input): never the same file."""
SCALE_KEY: dict[str, str] = {"nerfstudio": "depth_unit_scale_factor", "instant-ngp": "integer_depth_scale"}
"""The top-level key that marks a transforms file as written for that format."""
GS_BLENDER_DIVISOR = 512.0
"""3DGS reads a transforms.json scene's depth image as ``1/depth = png / 512``."""


class NerfExportError(ValueError):
    """The transforms file or the depth source cannot be used; the message says why."""


@dataclass
class NerfExportReport:
    format: str
    transforms: Path
    written: dict[str, str] = field(default_factory=dict)
    confidence: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    out_of_range_pixels: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ depth sources


def _key_variants(path: str) -> list[str]:
    """Lookup keys for a frame's ``file_path``: the path without ``./`` and extension,
    then ever shorter suffixes down to the bare stem."""
    p = PurePosixPath(str(path).replace("\\", "/"))
    parts = [q for q in p.with_suffix("").parts if q not in (".", "")]
    return ["/".join(parts[i:]) for i in range(len(parts))]


def _strip_ext(name: str) -> str:
    return str(PurePosixPath(name).with_suffix(""))


class DepthSource:
    """Depth maps by name, read lazily: ``get(frame_path) -> HxW float32 or None``; their
    confidence maps, where the source has them, by the key ``get`` returned."""

    def __init__(self, loaders: dict[str, Any], origin: str, confidence: dict[str, Any] | None = None,
                 confidence_hint: str = "") -> None:
        self._loaders = loaders
        self._confidence = confidence or {}
        self.origin = origin
        self.confidence_hint = confidence_hint

    def names(self) -> list[str]:
        return sorted(self._loaders)

    def get(self, frame_path: str) -> tuple[str, np.ndarray] | None:
        for key in _key_variants(frame_path):
            if key in self._loaders:
                value = self._loaders[key]
                return key, np.asarray(value() if callable(value) else value, dtype=np.float32)
        return None

    def get_confidence(self, key: str) -> np.ndarray | None:
        """The confidence map of a name ``get`` returned, as float32, or None."""
        value = self._confidence.get(key)
        if value is None:
            return None
        return np.asarray(value() if callable(value) else value, dtype=np.float32)

    def with_confidence(self, maps: Mapping[str, np.ndarray]) -> DepthSource:
        """This source with confidence maps from a mapping ``{name: HxW}`` (names with or
        without extension)."""
        return DepthSource(self._loaders, self.origin, {_strip_ext(k): v for k, v in maps.items()}, "the confidence mapping")


def open_depth_source(source: str | Path | Mapping[str, np.ndarray]) -> DepthSource:
    """A :class:`DepthSource` from an ``sddr refine`` output, an ``sddr colmap`` output or
    a mapping ``{name: depth}`` (names with or without extension)."""
    if isinstance(source, Mapping):
        return DepthSource({_strip_ext(k): v for k, v in source.items()}, "mapping")
    root = Path(source)
    if (root / "manifest.json").is_file():
        from sddr_pipeline.geometry.pointcloud import metric_depth, require_metric
        from sddr_pipeline.io import load_depth, read_manifest

        manifest = read_manifest(root)
        done = [n for n, e in manifest.get("images", {}).items() if e.get("status") == "done"]
        require_metric(root, manifest, done, "NeRF/3DGS depth supervision (in the scene's units)")

        def load(n: str) -> Callable[[], np.ndarray]:
            def read() -> np.ndarray:
                dm = load_depth(root, n)
                return metric_depth(dm.depth, dm.space, dm.metric, f"{root}/{n}")

            return read

        outputs = {n: manifest["images"][n].get("outputs", {}) for n in done}
        conf_files = {n: root / o["confidence"] for n, o in outputs.items() if "confidence" in o}
        return DepthSource({n: load(n) for n in done}, "sddr-refine", _npy_loaders(conf_files),
                           f"{root}/confidence/<name>.npy listed in manifest.json; add them with "
                           "`sddr refine ... --skip-existing --confidence`")
    if (root / "alignment.json").is_file() and (root / "stereo" / "depth_maps").is_dir():
        from sddr_pipeline.plugins.colmap import read_colmap_depth

        included = json.loads((root / "alignment.json").read_text(encoding="utf-8")).get("included", [])
        for n in included:
            check_name(n, str(root / "alignment.json"), "image name")
        maps = root / "stereo" / "depth_maps"
        conf_files = {_strip_ext(n): root / "confidence" / f"{_strip_ext(n)}.npy" for n in included}
        return DepthSource({_strip_ext(n): (lambda p=maps / f"{n}.geometric.bin": read_colmap_depth(p)) for n in included},
                           "sddr-colmap", _npy_loaders(conf_files), f"{root}/confidence/<stem>.npy, written by `sddr colmap`")
    raise NerfExportError(f"{root}: not an `sddr refine` output (manifest.json) nor an `sddr colmap` output (alignment.json)")


def _npy_loaders(files: Mapping[str, Path]) -> dict[str, Callable[[], np.ndarray]]:
    """Lazy ``np.load`` of the files that exist, by name."""
    return {n: (lambda p=p: np.load(p, allow_pickle=False)) for n, p in files.items() if p.is_file()}


# ------------------------------------------------------------------- encoding


def encode_linear_png16(depth: np.ndarray, unit: float) -> tuple[np.ndarray, int]:
    """uint16 ``round(depth / unit)``; invalid or out-of-range pixels become 0. Returns
    (codes, number of valid pixels that did not fit)."""
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    code = np.zeros(d.shape, np.float64)
    code[valid] = np.rint(d[valid] / unit)
    over = valid & ((code > 65535) | (code < 1))
    code[over | ~valid] = 0
    return code.astype(np.uint16), int(over.sum())


def encode_gs_blender_png16(depth: np.ndarray) -> tuple[np.ndarray, int]:
    """uint16 ``round(512 / depth)`` (3DGS's transforms.json convention); invalid
    pixels 0; inverse depths beyond the code range are clipped and counted."""
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    code = np.zeros(d.shape, np.float64)
    code[valid] = np.rint(GS_BLENDER_DIVISOR / d[valid])
    over = valid & (code > 65535)
    return np.clip(code, 0, 65535).astype(np.uint16), int(over.sum())


def encode_confidence_png16(conf: np.ndarray, depth_code: np.ndarray | None = None) -> np.ndarray:
    """uint16 ``round(confidence * 65535)`` (non-finite values 0, others clipped to
    [0, 1]); 0 where ``depth_code`` (the frame's depth PNG) is 0, i.e. no depth."""
    c = np.clip(np.nan_to_num(np.asarray(conf, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
    code = np.rint(c * 65535.0).astype(np.uint16)
    if depth_code is not None:
        code[np.asarray(depth_code) == 0] = 0
    return code


def read_confidence_png(path: str | Path) -> np.ndarray:
    """A confidence weight PNG written by :func:`export_nerf` as float32 in [0, 1]."""
    with Image.open(path) as im:
        mode = im.mode
        arr = np.asarray(im)
    if arr.ndim != 2 or not mode.startswith("I"):
        raise NerfExportError(f"{path}: not a 16-bit single-channel confidence PNG (mode {mode})")
    return (arr.astype(np.float64) / 65535.0).astype(np.float32)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _resize_nearest(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    if depth.shape == (height, width):
        return depth
    return np.asarray(Image.fromarray(depth.astype(np.float32), mode="F").resize((width, height), Image.NEAREST))


def _frame_size(base: Path, transforms: dict, frame: dict) -> tuple[int, int] | None:
    """(height, width) of a frame's image: the file's header, else the JSON's h/w."""
    path = frame.get("file_path")
    if path:
        candidates = [base / path] + [base / f"{path}{ext}" for ext in (".png", ".jpg", ".jpeg")]
        for c in candidates:
            if c.is_file():
                with Image.open(c) as im:
                    return im.height, im.width
    h, w = frame.get("h", transforms.get("h")), frame.get("w", transforms.get("w"))
    return (int(h), int(w)) if h and w else None


# --------------------------------------------------------------------- export


FrameMap = tuple[dict, str, np.ndarray, np.ndarray | None]
"""A frame with depth: (its transforms entry, its depth source name, depth in the
transforms' units at the image size, confidence or None)."""


def export_nerf(
    transforms_json: str | Path,
    depth_source: str | Path | Mapping[str, np.ndarray],
    format: Format = "nerfstudio",
    output: str | Path | None = None,
    *,
    depth_scale: float = 1.0,
    depth_unit: float | None = None,
    require_all: bool = False,
    confidence: bool | Mapping[str, np.ndarray] = False,
) -> NerfExportReport:
    """Write depth files and (nerfstudio / instant-ngp) a new transforms JSON; see the
    module docstring for each format.

    ``output``: the new transforms file (default :data:`DEFAULT_OUTPUT` of the format
    beside the input; never the input itself, nor a file exported for another format);
    depth files go beside it. ``depth_unit``: nerfstudio's
    ``depth_unit_scale_factor`` (default 1e-3) or instant-ngp's ``integer_depth_scale``
    (default: largest depth / 65535). ``require_all``: fail when a frame has no map
    (otherwise such frames are listed in ``report.missing`` and get no depth key).
    ``confidence``: also write a weight PNG per frame (module docstring), from the depth
    source's confidence files (True) or a mapping ``{name: HxW in [0, 1]}``; a frame with
    depth but no confidence map is an error naming the frame.
    """
    if format not in FORMATS:
        raise NerfExportError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if not depth_scale > 0:
        raise NerfExportError(f"depth_scale must be positive, got {depth_scale}")
    tpath = Path(transforms_json)
    transforms = _read_transforms(tpath)
    out_json = Path(output) if output is not None else tpath.parent / DEFAULT_OUTPUT.get(format, "")
    if format != "3dgs":
        _check_transforms_output(tpath, out_json, format)
    source = _open_source(depth_source, confidence)
    report = NerfExportReport(format, out_json)
    maps = _frame_maps(tpath, transforms, source, format, depth_scale, require_all, bool(confidence), report)
    if format == "3dgs":
        return _export_3dgs(maps, tpath.parent, report)
    return _export_linear(maps, transforms, out_json, format, depth_unit, report)


def _read_transforms(tpath: Path) -> dict[str, Any]:
    """The transforms file's content; it must have a non-empty ``frames`` list."""
    try:
        data = tpath.read_bytes()
    except OSError as exc:
        raise NerfExportError(f"cannot read {tpath}: {exc}") from None
    return parse_transforms(data, str(tpath), NerfExportError)


def _open_source(depth_source: str | Path | Mapping[str, np.ndarray],
                 confidence: bool | Mapping[str, np.ndarray]) -> DepthSource:
    """The depth source, with the confidence maps of a ``confidence`` mapping; a depth
    mapping has no confidence files, so ``confidence=True`` is refused for it."""
    source = open_depth_source(depth_source)
    if isinstance(confidence, Mapping):
        return source.with_confidence(confidence)
    if confidence and source.origin == "mapping":
        raise NerfExportError("confidence=True needs confidence files in the depth source folder; "
                              "with a depth mapping, pass the confidence maps as a mapping too")
    return source


def _frame_maps(
    tpath: Path, transforms: dict[str, Any], source: DepthSource, format: str, depth_scale: float,
    require_all: bool, want_conf: bool, report: NerfExportReport,
) -> list[FrameMap | None]:
    """Per frame of the transforms file, its depth (times ``depth_scale``) and confidence
    resized to the frame's image, or None for a frame without a map (listed in
    ``report.missing``; an error with ``require_all``)."""
    maps: list[FrameMap | None] = []
    for frame in transforms["frames"]:
        fp = frame.get("file_path")
        if not fp:
            raise NerfExportError(f"{tpath}: a frame has no file_path")
        found = source.get(fp)
        if found is None:
            if require_all:
                raise NerfExportError(f"no depth map for frame {fp!r} in {source.origin} (known: {', '.join(source.names()[:8])})")
            report.missing.append(fp)
            maps.append(None)
            continue
        key, depth = found
        check_name(key, f"{tpath}: frame {fp!r}", "depth file name")
        if format == "3dgs":
            check_name(PurePosixPath(fp).stem, f"{tpath}: frame {fp!r}", "image stem")
        conf = _frame_confidence(source, key, fp, depth.shape) if want_conf else None
        size = _frame_size(tpath.parent, transforms, frame)
        if size is not None:
            depth = _resize_nearest(depth, *size)
            if conf is not None:
                conf = _resize_nearest(conf, *size)
        maps.append((frame, key, depth * depth_scale, conf))
    return maps


def _export_linear(maps: list[FrameMap | None], transforms: dict[str, Any], out_json: Path, format: str,
                   depth_unit: float | None, report: NerfExportReport) -> NerfExportReport:
    """nerfstudio / instant-ngp: linear 16-bit depth PNGs (and confidence PNGs) beside
    ``out_json``, and a copy of the transforms naming them, with the format's scale key."""
    unit = depth_unit
    if unit is None:
        if format == "nerfstudio":
            unit = 1e-3
        else:
            peaks = [float(d[np.isfinite(d)].max()) for _, _, d, _ in filter(None, maps) if np.isfinite(d).any()]
            unit = (max(peaks) if peaks and max(peaks) > 0 else 1.0) / 65535.0
    if not unit > 0:
        raise NerfExportError(f"depth unit must be positive, got {unit}")
    out_base = out_json.parent
    new = json.loads(json.dumps(transforms))
    key_name = "depth_file_path" if format == "nerfstudio" else "depth_path"
    depth_dir, conf_dir = ("depth", "confidence") if format == "nerfstudio" else ("depth_ngp", "confidence_ngp")
    for frame_out, item in zip(new["frames"], maps):
        if item is None:
            continue
        _, key, depth, conf = item
        code, over = encode_linear_png16(depth, unit)
        report.out_of_range_pixels += over
        rel = f"{depth_dir}/{key}.png"
        atomic_write_bytes(out_base / rel, _png(code))
        frame_out[key_name] = rel
        report.written[frame_out["file_path"]] = rel
        if conf is not None:
            conf_rel = f"{conf_dir}/{key}.png"
            atomic_write_bytes(out_base / conf_rel, _png(encode_confidence_png16(conf, code)))
            frame_out["depth_confidence_path"] = conf_rel
            report.confidence[frame_out["file_path"]] = conf_rel
    new[SCALE_KEY[format]] = unit
    atomic_write_json(out_json, new)
    report.extra["depth_unit"] = unit
    return report


def _export_3dgs(maps: list[FrameMap | None], base: Path, report: NerfExportReport) -> NerfExportReport:
    """3DGS: inverse-depth PNGs (and confidence PNGs) under ``base/depths*`` and their
    ``depth_params.json`` (in ``sparse/0/`` when the folder has a COLMAP model)."""
    params: dict[str, dict[str, float]] = {}
    worst = 0.0
    for item in maps:
        if item is None:
            continue
        frame, _, depth, conf = item
        stem = PurePosixPath(frame["file_path"]).stem
        if stem in params:
            raise NerfExportError(
                f"two frames share the image stem {stem!r}; 3DGS looks depth up by stem (depths/<stem>.png), "
                "so export each transforms file into its own folder"
            )
        code, over = encode_gs_blender_png16(depth)
        report.out_of_range_pixels += over
        ok = code > 0
        if ok.any():
            back = GS_BLENDER_DIVISOR / code[ok]
            worst = max(worst, float(np.max(np.abs(back - depth[ok]) / depth[ok])))
        rel = f"depths/{stem}.png"
        atomic_write_bytes(base / rel, _png(code))
        params[stem] = {"scale": 65536.0 / GS_BLENDER_DIVISOR, "offset": 0.0}
        report.written[frame["file_path"]] = rel
        if conf is not None:
            conf_rel = f"depths_confidence/{stem}.png"
            atomic_write_bytes(base / conf_rel, _png(encode_confidence_png16(conf, code)))
            report.confidence[frame["file_path"]] = conf_rel
    sparse = base / "sparse" / "0"
    target = sparse / "depth_params.json" if sparse.is_dir() else base / "depth_params.json"
    atomic_write_json(target, params)
    report.transforms = target
    report.extra["depth_params"] = str(target)
    report.extra["max_quantisation_rel_error"] = worst
    return report


def _check_transforms_output(tpath: Path, out_json: Path, format: str) -> None:
    """Refuse to overwrite the input transforms file, or a transforms file another format
    wrote (it carries that format's scale key)."""
    if out_json.resolve() == tpath.resolve():
        raise NerfExportError(f"refusing to overwrite the input {tpath}; choose another output file")
    if not out_json.is_file():
        return
    try:
        existing = json.loads(out_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return
    others = [f for f, key in SCALE_KEY.items() if f != format and isinstance(existing, dict) and key in existing]
    if others:
        raise NerfExportError(
            f"refusing to overwrite {out_json}: it holds the {others[0]} export ({SCALE_KEY[others[0]]}); "
            f"write the {format} export to another --output (default {DEFAULT_OUTPUT[format]})"
        )


def _frame_confidence(source: DepthSource, key: str, frame_path: str, shape: tuple[int, ...]) -> np.ndarray:
    """The confidence map of a frame's depth ``key``; a clear error when it is missing or
    does not match the depth map."""
    conf = source.get_confidence(key)
    if conf is None:
        hint = f" (expected {source.confidence_hint})" if source.confidence_hint else ""
        raise NerfExportError(f"no confidence map for frame {frame_path!r} (name {key!r}) in {source.origin}{hint}")
    if conf.shape != shape:
        raise NerfExportError(f"confidence map of frame {frame_path!r} is {conf.shape} but its depth map is {shape}")
    return conf


# ------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``sddr nerf TRANSFORMS_JSON DEPTH_SOURCE --format F [--output FILE] ...``."""
    p.add_argument("transforms", type=Path, help="transforms.json (nerfstudio / instant-ngp / NeRF-synthetic)")
    p.add_argument("depth", type=Path, help="`sddr refine` output with metric maps, or `sddr colmap` output")
    p.add_argument("--format", choices=FORMATS, default="nerfstudio")
    p.add_argument("--output", type=Path, default=None,
                   help="new transforms file (default beside the input: transforms_depth.json for nerfstudio, "
                        "transforms_depth_ngp.json for instant-ngp)")
    p.add_argument("--depth-scale", type=float, default=1.0, help="multiply depths by this (the poses' rescale factor)")
    p.add_argument("--depth-unit", type=float, default=None, help="nerfstudio depth_unit_scale_factor / instant-ngp integer_depth_scale")
    p.add_argument("--require-all", action="store_true", help="fail when a frame has no depth map")
    p.add_argument("--confidence", action="store_true",
                   help="also write confidence/<frame>.png weight maps (uint16 = confidence * 65535) from DEPTH's confidence/ "
                        "(`sddr refine --confidence` or `sddr colmap`); frames get depth_confidence_path")
    p.set_defaults(func=cli)


def cli(args: argparse.Namespace) -> int:
    """Entry point of ``sddr nerf``."""
    try:
        report = export_nerf(args.transforms, args.depth, args.format, args.output, depth_scale=args.depth_scale,
                             depth_unit=args.depth_unit, require_all=args.require_all, confidence=args.confidence)
    except (NerfExportError, ValueError, FileNotFoundError) as exc:
        print(f"sddr nerf: {exc}", file=sys.stderr)
        return 2
    print(f"sddr nerf: {len(report.written)} depth maps ({report.format}) -> {report.transforms}"
          + (f"; {len(report.confidence)} confidence maps" if report.confidence else "")
          + (f"; {len(report.missing)} frames without depth" if report.missing else "")
          + (f"; {report.out_of_range_pixels} pixels out of the 16-bit range" if report.out_of_range_pixels else ""))
    return 0


__all__ = [
    "DEFAULT_OUTPUT",
    "FORMATS",
    "DepthSource",
    "NerfExportError",
    "NerfExportReport",
    "add_arguments",
    "cli",
    "encode_confidence_png16",
    "encode_gs_blender_png16",
    "encode_linear_png16",
    "export_nerf",
    "open_depth_source",
    "read_confidence_png",
]
