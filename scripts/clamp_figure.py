"""Picture of the local-range clamp: the network's overshoot halos with and without it.

Usage (from the repository root)::

    .venv/bin/python scripts/clamp_figure.py --scene Aloe --out docs/img/range_clamp.png

One TRAINING-split scene (middlebury2005_2006) through the ``simulated`` predictor at its
default noise, refined by the bundled weights with ``range_clamp=0`` (raw network output)
and at the default clamp. Top row: LOW input, raw refined, clamped refined (all
min-max normalised disparity); bottom row: each one's signed error against the ground
truth's disparity after least-squares alignment to it, on valid GT pixels (mid-grey = 0,
black/white = -/+0.05; invalid GT pixels mid-grey). The halos are the dark/bright bands
hugging every leaf in the middle column.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sddr_pipeline.data import open_dataset
from sddr_pipeline.inference.alignment import align_least_squares
from sddr_pipeline.inference.normalize import minmax_normalize, resize
from sddr_pipeline.inference.core import predict_pair, refine_predictions
from sddr_pipeline.inference.options import RefineOptions
from sddr_pipeline.inference.range_clamp import RANGE_CLAMP
from sddr_pipeline.models import Refiner
from sddr_pipeline.predictors import get_predictor
from sddr_pipeline.predictors.simulated import gt_disparity, resize_map


def gray(x: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    return (np.clip((x[0, 0].numpy() - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("SDDR_SHARED_DATA", "../shared/data"))
    p.add_argument("--scene", default="Aloe")
    p.add_argument("--predictor", default="simulated")
    p.add_argument("--width", type=int, default=1200, help="width of the saved picture in pixels")
    p.add_argument("--out", type=Path, default=Path("docs/img/range_clamp.png"))
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dataset = open_dataset(Path(args.data) / "middlebury2005_2006")
    sample = next((s for s in dataset if s.name == args.scene or s.name.split("/")[0] == args.scene), None)
    if sample is None:
        raise SystemExit(f"no scene {args.scene!r} in {args.data}/middlebury2005_2006")
    predictor = get_predictor(args.predictor)
    refiner = Refiner.from_pretrained("default")
    options = RefineOptions().resolved(predictor, refiner)
    low_res, high_res = options.low_res, options.high_res
    low, high, _ = predict_pair(sample.image(), predictor, low_res, high_res, sample.context())
    with torch.no_grad():
        raw = refine_predictions(low, high, predictor.kind, refiner, range_clamp=0)
        clamped = refine_predictions(low, high, predictor.kind, refiner, range_clamp=RANGE_CLAMP)
    size = tuple(raw.high_disp.shape[-2:])
    low_n = minmax_normalize(resize(raw.low_disp, size))[0]
    context = sample.context()
    gt = torch.from_numpy(resize_map(gt_disparity(context.gt, context.gt_kind), size)).float()[None, None]
    valid = torch.from_numpy(resize_map(np.isfinite(context.gt) & (context.gt > 0), size) > 0.999)[None, None]
    maps_n = [low_n, raw.refined, clamped.refined]
    errors = []
    for m in maps_n:
        a, b = align_least_squares(m, gt, valid)
        errors.append(torch.where(valid, a * m + b - gt, torch.zeros_like(gt)))
    top = np.concatenate([gray(minmax_normalize(m)[0]) for m in maps_n], 1)
    bottom = np.concatenate([gray(e, -0.05, 0.05) for e in errors], 1)
    for label, e in zip(("LOW", "raw", "clamped"), errors):
        print(f"{label:8s} mean |error| on valid GT: {e.abs()[valid].mean().item():.4f}")
    grid = np.concatenate([top, bottom], 0)
    height = round(args.width * grid.shape[0] / grid.shape[1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((args.width, height), Image.BILINEAR).save(args.out)
    print(f"{sample.name}: wrote {args.out} ({args.width}x{height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
