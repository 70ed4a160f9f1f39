"""Depth accuracy of ``sddr colmap``: the tables of docs/INTEGRATIONS.md, as markdown.

Usage (from the repository root)::

    .venv/bin/python scripts/colmap_accuracy.py scene --weights untrained:sddr-small --weights default --markdown out/colmap_scene.md
    .venv/bin/python scripts/colmap_accuracy.py sample --weights default --markdown out/colmap_sample.md

``scene``: the synthetic scene of exactly known depth of ``tests/test_colmap.py`` (its
workspaces, built as its tests build them: PINHOLE, 4 views, one left with 5 points; and
SIMPLE_RADIAL k=-0.08, 3 views, undistorted by COLMAP), one row per ``--weights``
(``untrained:PRESET`` for an untrained refiner, as in the test). Each cell is the median
relative error of the written depth maps against the exact depth over all their valid
pixels, with the range of the per-map medians.

``sample``: ``sddr capture-sample`` then ``sddr colmap --predictor simulated --gt-depth``
on the RGB-D sample (the commands of docs/INTEGRATIONS.md), and the written depth maps
against the sample's exact depth, over the pixels where both have depth.

Every number printed is measured by the run; nothing is carried over.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def load_refiner(spec: str) -> tuple[Any, str]:
    """A refiner and its row label: ``untrained:PRESET`` or weights for ``Refiner.from_pretrained``."""
    from sddr_pipeline.models import Refiner

    if spec.startswith("untrained:"):
        refiner = Refiner.from_config(spec.split(":", 1)[1])
        return refiner, f"untrained `{refiner.config.name}` (as in the test)"
    refiner = Refiner.from_pretrained(spec)
    return refiner, f"`{refiner.version}`" + (" (bundled)" if spec == "default" else "")


def pct(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f} %"


def span(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """``lo-hi`` of the formatted values, or one value where both print the same."""
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo.removesuffix(' %')}-{hi}"


def header(what: str, seconds: float) -> str:
    return (f"Measured {time.strftime('%Y-%m-%d')} ({what}); {seconds:.0f} s wall on {os.cpu_count()} CPU cores, "
            "by the command above.")


# ------------------------------------------------------------------------ scene


def scene_errors(root: Path, model: str, refiner: Any, predictor: Any) -> list[np.ndarray]:
    """Relative depth errors of each included map of one synthetic workspace (as the test builds it)."""
    from test_colmap import _depth_errors, build_workspace, gt_context

    from sddr_pipeline.plugins.colmap import run_colmap

    ws = root / model
    if model == "PINHOLE":
        build_workspace(ws, "PINHOLE", starved="view_03.png")
    else:
        build_workspace(ws, model, n_views=3, seed=1)
    report = run_colmap(ws, predictor, refiner, context_fn=gt_context)
    return _depth_errors(ws / "sddr", report)


def scene_table(weights: Sequence[str], predictor_spec: str, work: Path) -> str:
    """One row per refiner: median relative error (range of per-map medians) per camera model."""
    sys.path.insert(0, str(REPO / "tests"))
    from sddr_pipeline.predictors import get_predictor

    t0 = time.perf_counter()
    predictor = get_predictor(predictor_spec)
    rows = ["| refiner | PINHOLE | SIMPLE_RADIAL k=-0.08 (undistorted) |", "|---|---|---|"]
    for i, spec in enumerate(weights):
        refiner, label = load_refiner(spec)
        cells = []
        for model in ("PINHOLE", "SIMPLE_RADIAL"):
            rel = scene_errors(work / str(i), model, refiner, predictor)
            medians = [float(np.median(r)) for r in rel]
            cells.append(f"{pct(float(np.median(np.concatenate(rel))))} ({span(medians, pct)} per map, {len(rel)} maps)")
        rows.append(f"| {label} | {' | '.join(cells)} |")
    return header(f"predictor `{predictor_spec}`", time.perf_counter() - t0) + "\n\n" + "\n".join(rows) + "\n"


# ----------------------------------------------------------------------- sample


def sample_table(weights: str, predictor_spec: str, data: Path | None, work: Path) -> str:
    """capture-sample + colmap on the RGB-D sample: the fit at the SfM points, then the maps
    against the exact depth."""
    from sddr_pipeline.models import Refiner
    from sddr_pipeline.plugins.capture import build_capture
    from sddr_pipeline.plugins.colmap import GroundTruthDepth, read_colmap_depth, run_colmap
    from sddr_pipeline.predictors import get_predictor

    capture = work / "capture"
    t0 = time.perf_counter()
    build_capture(capture, data)
    t_capture = time.perf_counter() - t0
    refiner = Refiner.from_pretrained(weights)
    gt_depth = GroundTruthDepth(capture / "gt_depth")
    report = run_colmap(capture, get_predictor(predictor_spec), refiner, context_fn=gt_depth)
    rel, shares = [], []
    for name in report.included:
        est, gt = read_colmap_depth(capture / "sddr" / "stereo" / "depth_maps" / f"{name}.geometric.bin"), gt_depth.load(name)
        both = (est > 0) & (gt > 0)
        rel.append(np.abs(est[both] - gt[both]) / gt[both])
        shares.append(float(both.mean()))
    images = json.loads((capture / "sddr" / "alignment.json").read_text())["images"]
    fitted = [images[n] for n in report.included]
    pooled = np.concatenate(rel)
    text = (
        f"{len(report.included)} of {len(images)} maps included, {span([e['usable'] for e in fitted], str)} usable points "
        f"per image, median relative error at the SfM points "
        f"{span([e['alignment']['median_rel_error'] for e in fitted], lambda v: pct(v, 2))}. Against the exact depth, "
        f"the pixels where both have depth ({span(shares, lambda v: pct(v, 0))} of each frame):\n\n"
        "| maps | median | mean | p90 | within 5 % |\n|---|---|---|---|---|\n"
        f"| `stereo/depth_maps/*.geometric.bin` ({len(rel)} frames, {pooled.size / 1e6:.2f} M px) | "
        f"{pct(float(np.median(pooled)), 2)} ({span([float(np.median(r)) for r in rel], lambda v: pct(v, 2))} per frame) | "
        f"{pct(float(pooled.mean()), 2)} | {pct(float(np.percentile(pooled, 90)))} "
        f"({span([float(np.percentile(r, 90)) for r in rel], pct)} per frame) | {pct(float((pooled <= 0.05).mean()))} |\n"
    )
    what = (f"`{refiner.version}`, predictor `{predictor_spec}`; capture-sample {t_capture:.1f} s, "
            f"sddr colmap {report.seconds:.0f} s")
    return header(what, time.perf_counter() - t0) + "\n\n" + text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", choices=("scene", "sample"))
    p.add_argument("--weights", action="append", default=None,
                   help="refiner weights (default: default), or untrained:PRESET; scene: repeat for one row each")
    p.add_argument("--predictor", default=None,
                   help="predictor spec (default: simulated:low=64,high=160 for scene, as the test; simulated for sample)")
    p.add_argument("--data", type=Path, default=None, help="sample: the rgbd_sequence folder (default: capture-sample's)")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    args = p.parse_args(argv)
    weights = args.weights or ["default"]
    with tempfile.TemporaryDirectory(prefix="colmap-accuracy-") as tmp:
        if args.table == "scene":
            text = scene_table(weights, args.predictor or "simulated:low=64,high=160", Path(tmp))
        else:
            if len(weights) != 1:
                p.error("sample takes one --weights")
            text = sample_table(weights[0], args.predictor or "simulated", args.data, Path(tmp))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
