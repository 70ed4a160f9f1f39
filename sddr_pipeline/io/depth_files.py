"""Writing and reading refined depth: float32 .npy, 16-bit PNG, colourised previews."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from .atomic import atomic_write, atomic_write_bytes
from .names import check_name
from .resumable import load_manifest

PNG16_ENCODING = "linear-uint16: value = png * scale + offset; png 0 = invalid"


def save_npy(path: Path, depth: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.asarray(depth, dtype=np.float32), allow_pickle=False))


def encode_png16(depth: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Linear 16-bit code of a map: ``value = png * scale + offset`` with 1..65535 used
    for finite values (0 marks non-finite pixels). Returns (uint16 array, scale, offset)."""
    d = np.asarray(depth, dtype=np.float64)
    finite = np.isfinite(d)
    if not finite.any():
        return np.zeros(d.shape, np.uint16), 1.0, 0.0
    lo, hi = float(d[finite].min()), float(d[finite].max())
    scale = (hi - lo) / 65534.0 if hi > lo else 1.0
    offset = lo - scale  # so that png value 1 decodes to lo
    code = np.zeros(d.shape, np.uint16)
    code[finite] = np.clip(np.round((d[finite] - offset) / scale), 1, 65535).astype(np.uint16)
    return code, scale, offset


def save_png16(path: Path, depth: np.ndarray) -> dict:
    """Write a 16-bit PNG; returns the encoding (also stored in the PNG's text chunk)."""
    code, scale, offset = encode_png16(depth)
    enc = {"encoding": PNG16_ENCODING, "scale": scale, "offset": offset}
    info = PngImagePlugin.PngInfo()
    info.add_text("sddr", json.dumps(enc))
    buf = io.BytesIO()
    Image.fromarray(code).save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buf.getvalue())
    return enc


def read_png16(path: Path) -> np.ndarray:
    """Decode a PNG written by :func:`save_png16` back to float32 (NaN where invalid)."""
    with Image.open(path) as im:
        meta = json.loads(im.text["sddr"]) if "sddr" in getattr(im, "text", {}) else None
        code = np.asarray(im).astype(np.float64)
    if meta is None:
        raise ValueError(f"{path}: no 'sddr' text chunk; not written by sddr-pipeline")
    out = code * meta["scale"] + meta["offset"]
    out[code == 0] = np.nan
    return out.astype(np.float32)


# Turbo colormap, Google's published polynomial approximation (Mikhailov, 2019).
_TURBO_R = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
_TURBO_G = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
_TURBO_B = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)


def colorize(x: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """HxW map -> HxWx3 uint8 with the Turbo colormap (robust 1-99% range by default)."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    if lo is None or hi is None:
        vals = x[finite]
        lo, hi = (np.percentile(vals, [1, 99]) if vals.size else (0.0, 1.0))
    t = np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1)
    t = np.where(finite, t, 0)
    rgb = np.stack([sum(c * t**k for k, c in enumerate(coeffs)) for coeffs in (_TURBO_R, _TURBO_G, _TURBO_B)], -1)
    rgb = np.clip(rgb * 255, 0, 255).astype(np.uint8)
    rgb[~finite] = 0
    return rgb


def save_preview(path: Path, image: np.ndarray, disparity_like: np.ndarray) -> None:
    """Input image and colourised depth side by side (near = warm), as one PNG."""
    colour = colorize(disparity_like)
    h = image.shape[0]
    if colour.shape[:2] != image.shape[:2]:
        colour = np.asarray(Image.fromarray(colour).resize((image.shape[1], h), Image.BILINEAR))
    both = np.concatenate([image, colour], axis=1)
    buf = io.BytesIO()
    Image.fromarray(both).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class DepthMap:
    """A refined map read back from an output folder, with what its numbers mean."""

    name: str
    depth: np.ndarray
    space: str
    metric: bool
    entry: dict


def read_manifest(output: str | Path) -> dict:
    """The ``manifest.json`` of an ``sddr refine`` OUTPUT folder, with every image name and
    every output path it lists checked (:func:`~sddr_pipeline.io.names.check_name`): the
    names become file names in other commands, so a manifest naming ``../../x`` is refused
    before any file is touched."""
    root = Path(output)
    path = root / "manifest.json"
    manifest = load_manifest(path, error=ValueError)
    if manifest is None:
        raise FileNotFoundError(f"{root}: no manifest.json; not an `sddr refine` output folder")
    images = manifest.get("images", {})
    if not isinstance(images, dict):
        raise ValueError(f"{path}: 'images' must be an object {{name: entry}}")
    for name, entry in images.items():
        check_name(name, str(path), "image name")
        outputs = entry.get("outputs", {}) if isinstance(entry, dict) else {}
        for key, rel in (outputs.items() if isinstance(outputs, dict) else ()):
            check_name(rel, f"{path}: image {name!r}", f"outputs.{key} path")
    return manifest


def load_depth(output: str | Path, name: str | None = None) -> DepthMap | dict[str, DepthMap]:
    """Read refined depth written by ``sddr refine``.

    ``load_depth(out, "scene/img")`` returns one :class:`DepthMap`; ``load_depth(out)``
    returns all completed images keyed by name. ``output`` is the OUTPUT folder.
    """
    root = Path(output)
    images = read_manifest(root).get("images", {})

    def one(n: str) -> DepthMap:
        entry = images.get(n)
        if entry is None or entry.get("status") != "done":
            known = ", ".join(sorted(k for k, v in images.items() if v.get("status") == "done")[:10])
            raise KeyError(f"{root}: no completed image named {n!r} (completed: {known or 'none'})")
        arr = np.load(root / entry["outputs"]["depth_npy"], allow_pickle=False)
        return DepthMap(n, arr, entry["space"], bool(entry["metric"]), entry)

    if name is not None:
        return one(name)
    return {n: one(n) for n, e in sorted(images.items()) if e.get("status") == "done"}
