"""HTML evaluation report: the metric table and one composite picture per image.

A composite is a labelled grid a person can scan in a minute. Columns: the input, then
low, high, SDDR one-stage and SDDR two-stage. Rows:

1. input RGB | each method's aligned disparity, coloured on the GT's 1-99 % range so
   colours compare across tiles (near = warm),
2. GT disparity | abs-rel error ``|d - gt| / gt`` after alignment, on a fixed 0-0.25 scale
   (black = no GT),
3. GT edges on the input | GT edges (green) vs the method's edges (magenta), white where
   they coincide, on the dimmed input.

Captions carry the method's key metrics. Maps are shrunk to tiles with masked box
averaging (so sparse GT stays visible) and edges with "any pixel in the block" (so
1-px edges survive).
"""
from __future__ import annotations

import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io import atomic_write_bytes, colorize
from . import metrics as M
from .methods import METHOD_LABELS

PANEL_METHODS: tuple[str, ...] = ("low", "high", "sddr_one_stage", "sddr_two_stage")
ERROR_RANGE = (0.0, 0.25)
TILE_AREA = 320 * 230
CAPTION_H = 36
TITLE_H = 44
PAD = 6
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
MUTED = (160, 160, 160)
GT_EDGE = np.array([40, 220, 40], np.uint8)
PRED_EDGE = np.array([255, 40, 255], np.uint8)
BOTH_EDGE = np.array([255, 255, 255], np.uint8)
_TABLE_FORMAT: dict[str, str] = {"rel": "{:.4f}", "rmse": "{:.4f}", "ord": "{:.4f}", "d3r": "{:.4f}", "bf1": "{:.4f}"}
_HEADERS: dict[str, str] = {
    "delta1": "δ1↑", "delta2": "δ2↑", "delta3": "δ3↑", "rel": "REL↓", "rmse": "RMSE↓",
    "ord": "ORD↓", "d3r": "D3R↓", "dbe_acc": "DBE acc↓", "dbe_comp": "DBE comp↓", "bf1": "BF1↑",
}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def tile_size(shape: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a tile: about TILE_AREA pixels at the map's aspect, 200-520 px wide."""
    h, w = shape
    tw = int(np.clip(np.sqrt(TILE_AREA * w / h), 200, 520))
    return max(1, round(tw * h / w)), tw


def shrink_rgb(rgb: np.ndarray, size: tuple[int, int], valid: np.ndarray | None = None) -> np.ndarray:
    """Resize an HxWx3 uint8 image to ``size`` = (h, w); with ``valid``, a masked box
    average (tiles with no valid source pixel stay black)."""
    target = (size[1], size[0])
    if valid is None:
        return np.asarray(Image.fromarray(rgb).resize(target, Image.BOX if size[0] < rgb.shape[0] else Image.BILINEAR))
    out = np.zeros((*size, 3), np.float64)
    weight = np.asarray(Image.fromarray(valid.astype(np.float32)).resize(target, Image.BOX), np.float64)
    for c in range(3):
        chan = np.asarray(Image.fromarray((rgb[..., c] * valid).astype(np.float32)).resize(target, Image.BOX), np.float64)
        out[..., c] = np.where(weight > 1e-6, chan / np.maximum(weight, 1e-6), 0.0)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized to ``size``: True where any source pixel of the block is."""
    small = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((size[1], size[0]), Image.BOX))
    return small > 1e-6


def dimmed_gray(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The input as dim grey (a backdrop for edge overlays) at ``size``."""
    lum = shrink_rgb(image, size).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    g = (0.35 * lum).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def edge_overlay(image: np.ndarray, size: tuple[int, int], gt_edges: np.ndarray, pred_edges: np.ndarray | None) -> np.ndarray:
    """GT edges green, predicted magenta, both white, on the dimmed input, at ``size``."""
    out = dimmed_gray(image, size)
    g = shrink_mask(gt_edges, size)
    p = shrink_mask(pred_edges, size) if pred_edges is not None else np.zeros_like(g)
    out[g & ~p] = GT_EDGE
    out[p & ~g] = PRED_EDGE
    out[g & p] = BOTH_EDGE
    return out


def disparity_range(ref: M.GroundTruth) -> tuple[float, float]:
    """The GT disparity's 1-99 % range over valid pixels (the colour scale of row 1)."""
    vals = ref.disparity[ref.valid]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [1, 99])
    return float(lo), float(max(hi, lo + 1e-12))


def error_map(prep: M.PreparedPrediction, ref: M.GroundTruth) -> np.ndarray:
    """abs-rel error of the aligned depth at valid pixels, 0 elsewhere."""
    g = np.where(ref.valid, ref.depth, 1.0)
    return np.where(ref.valid, np.abs(prep.depth - g) / g, 0.0)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _message_tile(size: tuple[int, int], text: str) -> np.ndarray:
    tile = Image.new("RGB", (size[1], size[0]), (48, 48, 48))
    ImageDraw.Draw(tile).text((8, size[0] // 2 - 8), text, fill=MUTED, font=_font(13))
    return np.asarray(tile)


def _colour_bar(width: int, lo: float, hi: float, label: str, font: ImageFont.ImageFont) -> Image.Image:
    bar = Image.new("RGB", (width, 30), BACKGROUND)
    ramp = colorize(np.tile(np.linspace(0, 1, width - 90)[None, :], (10, 1)), 0.0, 1.0)
    bar.paste(Image.fromarray(ramp), (45, 2))
    draw = ImageDraw.Draw(bar)
    draw.text((0, 0), f"{lo:.3g}", fill=TEXT, font=font)
    draw.text((width - 42, 0), f"{hi:.3g}", fill=TEXT, font=font)
    draw.text((45, 14), label, fill=MUTED, font=font)
    return bar


def render_panel(
    name: str,
    image: np.ndarray,
    ref: M.GroundTruth,
    prepared: dict[str, M.PreparedPrediction],
    scores: dict[str, Any],
    methods: tuple[str, ...] = PANEL_METHODS,
) -> Image.Image:
    """The composite picture of one image (see the module docstring)."""
    methods = tuple(m for m in methods if m in prepared)
    th, tw = tile_size(ref.shape)
    lo, hi = disparity_range(ref)
    font, small = _font(14), _font(12)
    gt_rgb = colorize(np.where(ref.valid, ref.disparity, np.nan), lo, hi)
    column0 = [
        ("input", f"{image.shape[1]}x{image.shape[0]} px", shrink_rgb(image, (th, tw))),
        ("GT disparity", f"{ref.valid_fraction:.0%} valid ({ref.kind})", shrink_rgb(gt_rgb, (th, tw), ref.valid)),
        (
            "GT edges",
            "Canny on depth + inverse depth",
            edge_overlay(image, (th, tw), ref.edges, None) if ref.edges is not None else _message_tile((th, tw), "GT too sparse for edges"),
        ),
    ]
    columns = [column0]
    for m in methods:
        prep, sc = prepared[m], scores[m]
        disp = colorize(1.0 / prep.depth, lo, hi)
        err = colorize(error_map(prep, ref), *ERROR_RANGE)
        if ref.edges is not None and prep.edges is not None:
            edges = edge_overlay(image, (th, tw), ref.edges, prep.edges)
            edge_caption = f"DBE acc {_fmt(sc['dbe_acc'], 2)} comp {_fmt(sc['dbe_comp'], 2)}  BF1 {_fmt(sc['bf1'])}"
        else:
            edges = _message_tile((th, tw), "edge metrics need dense GT")
            edge_caption = "edges: undefined"
        columns.append([
            (METHOD_LABELS.get(m, m), f"d1 {_fmt(sc['delta1'])}  REL {_fmt(sc['rel'], 4)}", shrink_rgb(disp, (th, tw))),
            ("abs rel error", f"ORD {_fmt(sc['ord'], 3)}  D3R {_fmt(sc['d3r'], 3)}", shrink_rgb(err, (th, tw), ref.valid)),
            ("edges", edge_caption, edges),
        ])
    width = PAD + len(columns) * (tw + PAD)
    height = TITLE_H + 3 * (CAPTION_H + th + PAD) + PAD
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 6), name, fill=TEXT, font=_font(18))
    draw.text((PAD, 27), "row 1: aligned disparity (GT colour scale)   row 2: abs rel error   row 3: GT edges green, method magenta, both white",
              fill=MUTED, font=small)
    bar_w = min(260, max(160, width // 5))
    if width > 2 * bar_w + 500:
        canvas.paste(_colour_bar(bar_w, lo, hi, "disparity", small), (width - 2 * bar_w - 2 * PAD, 6))
        canvas.paste(_colour_bar(bar_w, *ERROR_RANGE, "abs rel error", small), (width - bar_w - PAD, 6))
    for ci, column in enumerate(columns):
        x = PAD + ci * (tw + PAD)
        for ri, (title, caption, tile) in enumerate(column):
            y = TITLE_H + ri * (CAPTION_H + th + PAD)
            draw.text((x, y + 1), title, fill=TEXT, font=font)
            draw.text((x, y + 18), caption, fill=MUTED, font=small)
            canvas.paste(Image.fromarray(tile), (x, y + CAPTION_H))
    return canvas


def _safe_file_name(index: int, name: str) -> str:
    return f"{index:03d}_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image") + ".png"


def _cell(value: float | None, key: str, count: int | None, total: int, best: bool) -> str:
    if value is None:
        return "<td class='na'>–</td>"
    text = _TABLE_FORMAT.get(key, "{:.3f}").format(value)
    if best:
        text = f"<b>{text}</b>"
    if count is not None and count < total:
        text += f"<sub>{count}/{total}</sub>"
    return f"<td>{text}</td>"


def metrics_table(rows: dict[str, dict[str, Any]], total: int | None = None) -> str:
    """HTML table of methods x metrics; the best value of each column (as displayed) in bold; with
    ``total`` images, a subscript count where a mean covers fewer."""
    head = "".join(f"<th>{html.escape(_HEADERS[k])}</th>" for k in M.METRIC_KEYS)

    def shown(k: str, v: float | None) -> float | None:
        return None if v is None else float(_TABLE_FORMAT.get(k, "{:.3f}").format(v))

    best: dict[str, float] = {}
    for k in M.METRIC_KEYS:
        vals = [shown(k, r.get(k)) for r in rows.values() if r.get(k) is not None]
        if vals:
            best[k] = max(vals) if M.HIGHER_IS_BETTER[k] else min(vals)
    body = []
    for name, r in rows.items():
        counts = r.get("counts", {})
        cells = "".join(
            _cell(r.get(k), k, counts.get(k) if total else None, total or 0, shown(k, r.get(k)) == best.get(k, math.nan))
            for k in M.METRIC_KEYS
        )
        body.append(f"<tr><th class='m'>{html.escape(METHOD_LABELS.get(name, name))}</th>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"


_CSS = """
body{font-family:system-ui,sans-serif;background:#181818;color:#e8e8e8;margin:24px;max-width:1900px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:3px 9px;text-align:right;border-bottom:1px solid #333}
th.m{text-align:left}td.na{color:#777}sub{color:#999;font-size:70%}img{max-width:100%;border:1px solid #333}
.cfg{color:#aaa;font-size:90%}h2{margin-top:36px;font-size:18px}
"""


class ReportWriter:
    """Writes ``images/NNN_<name>.png`` as images are scored, then ``index.html`` and
    ``results.json`` in :meth:`finish`."""

    def __init__(self, folder: str | Path, methods: tuple[str, ...]) -> None:
        self.folder = Path(folder)
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        self.methods = methods
        self.pictures: dict[str, str] = {}

    def add_image(
        self,
        name: str,
        image: np.ndarray,
        ref: M.GroundTruth,
        prepared: dict[str, M.PreparedPrediction],
        row: dict[str, Any],
    ) -> Path:
        panel = render_panel(name, image, ref, prepared, row, tuple(m for m in PANEL_METHODS if m in self.methods))
        rel = f"images/{_safe_file_name(len(self.pictures), name)}"
        buf = io.BytesIO()
        panel.save(buf, format="PNG", optimize=True)
        atomic_write_bytes(self.folder / rel, buf.getvalue())
        self.pictures[name] = rel
        return self.folder / rel

    def finish(self, results: dict[str, Any]) -> Path:
        cfg = results["config"]
        total = int(cfg["images"])
        summary = (
            f"{total} image(s) of <code>{html.escape(str(cfg['dataset']))}</code> ({html.escape(cfg['layout'])}); "
            f"predictor <code>{html.escape(str(cfg['predictor_name']))}</code> ({html.escape(cfg['predictor_kind'])}) "
            f"at {cfg['resolutions']['low']} / {cfg['resolutions']['high']} px; refiner <code>{html.escape(cfg['refiner'])}</code>; "
            f"alignment: {html.escape(cfg['alignment']['fit'])} in {html.escape(cfg['alignment']['space'])}; "
            f"{cfg['seconds']:.1f} s."
        )
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'><title>sddr eval</title>",
            f"<style>{_CSS}</style></head><body><h1>Depth refinement evaluation</h1>",
            f"<p class='cfg'>{summary}</p>",
            metrics_table(results["methods"], total),
            "<p class='cfg'>Means over images where a metric is defined (subscript: on how many). "
            "ORD/D3R/DBE/BF1 need dense ground truth. Bold: best in column.</p>",
        ]
        for row in results["per_image"]:
            name = row["name"]
            parts.append(f"<h2>{html.escape(name)}</h2>")
            parts.append(metrics_table({m: row[m] for m in self.methods if m in row}))
            if name in self.pictures:
                parts.append(f"<a href='{self.pictures[name]}'><img src='{self.pictures[name]}' alt='{html.escape(name)}'></a>")
        parts.append(f"<h2>Configuration</h2><pre class='cfg'>{html.escape(json.dumps(cfg, indent=2))}</pre></body></html>")
        atomic_write_bytes(self.folder / "results.json", (json.dumps(results, indent=2, allow_nan=False) + "\n").encode())
        index = self.folder / "index.html"
        atomic_write_bytes(index, "\n".join(parts).encode())
        return index
