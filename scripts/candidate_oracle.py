"""How good can a gated head's candidates get? A block oracle on the validation scenes.

Usage (from the repository root)::

    .venv/bin/python scripts/candidate_oracle.py --candidates v2 --noise 0.15,2,0.3

For each image of the validation sets the ``simulated`` predictor makes LOW (384) and HIGH
(1024); the candidate maps are built at the refinement working size; an oracle that knows
the ground truth picks, in every ``--block`` px block, the candidate closest to it (mean
squared error in LOW's normalised units, the GT least-squares aligned to LOW), blends the
picks with a 5 px box, and the result goes through the same `restore_units` as SDDR's
output. Printed: per dataset, the mean REL / D3R / DBE_comp of LOW and of the oracle, and
the oracle's ratios to LOW. An upper bound of what ANY weights of that head can reach
(block-wise), used to choose the candidate set (docs/QUALITY_HISTORY.md).

Candidate sets: ``v1`` (LOW, G_s(LOW) + H - G_s(H) at s = 3, 8, 24 px, H), ``median`` and
``bilateral`` (v1 on HIGH pre-smoothed by a 5x5 median / a bilateral filter), ``v2`` (the
:func:`sddr_pipeline.models.fusion.fusion_candidates` now in the code).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import kornia
import numpy as np
import torch
import torch.nn.functional as F

from sddr_pipeline.data import open_dataset
from sddr_pipeline.evaluation.metrics import evaluate_prediction
from sddr_pipeline.inference.alignment import align_least_squares
from sddr_pipeline.inference.normalize import minmax_normalize, prepare_prediction_batch, resize
from sddr_pipeline.inference.core import restore_units
from sddr_pipeline.models.fusion import align_to, fusion_candidates, gaussian_blur
from sddr_pipeline.predictors import get_predictor
from sddr_pipeline.predictors.simulated import gt_disparity

SIGMAS = (3.0, 8.0, 24.0)


def candidates(name: str, low: torch.Tensor, high: torch.Tensor, median: int = 5) -> torch.Tensor:
    if name == "v2":
        return fusion_candidates(low, high, SIGMAS, median=median)
    h = align_to(high, low)
    if name == "median":
        h = kornia.filters.median_blur(h, 5)
    elif name == "bilateral":
        h = kornia.filters.bilateral_blur(h, (7, 7), 0.03, (2.0, 2.0), border_type="replicate")
    return torch.cat([low] + [gaussian_blur(low, s) + h - gaussian_blur(h, s) for s in SIGMAS] + [h], dim=1)


def oracle(c: torch.Tensor, gt: torch.Tensor, block: int) -> torch.Tensor:
    size = tuple(c.shape[-2:])
    err = F.avg_pool2d((c - gt) ** 2, block, ceil_mode=True)
    pick = F.interpolate(err.argmin(1, keepdim=True).float(), size=size, mode="nearest").long()
    w = F.avg_pool2d(torch.zeros_like(c).scatter_(1, pick, 1.0), 5, 1, 2, count_include_pad=False)
    return (w * c).sum(1, keepdim=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", choices=("v1", "median", "bilateral", "v2"), default="v2")
    p.add_argument("--median", type=int, default=5, help="v2: the median window of HIGH - LOW (1 = none)")
    p.add_argument("--noise", default="0.15,2,0.3", help="cons,edge,texture of the simulated predictor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block", type=int, default=16)
    p.add_argument("--data", default=os.environ.get("SDDR_SHARED_DATA", "../shared/data"))
    p.add_argument("--datasets", nargs="+", default=["middlebury2014q", "nyu_sample", "rgbd_sequence_sample"])
    args = p.parse_args()
    torch.set_num_threads(1)
    cons, edge, texture = args.noise.split(",")
    predictor = get_predictor(f"simulated:cons={cons},edge={edge},texture={texture},seed={args.seed}")
    for ds in args.datasets:
        rows = []
        for sample in open_dataset(Path(args.data) / ds):
            image, ctx = sample.image(), sample.context()
            low, high = predictor.predict(image, 384, ctx), predictor.predict(image, 1024, ctx)
            low_d, high_d = prepare_prediction_batch([low, high], predictor.kind, "cpu")
            size = tuple(high_d.shape[-2:])
            low_n = minmax_normalize(resize(low_d, size))[0]
            high_n = minmax_normalize(high_d)[0]
            gt = resize(torch.from_numpy(gt_disparity(sample.gt, sample.gt_kind)).float()[None, None], size)
            a, b = align_least_squares(gt, low_n)
            best = oracle(candidates(args.candidates, low_n, high_n, args.median), a * gt + b, args.block)
            row = []
            for m in (low_n, best):
                depth = restore_units(m, low_d, predictor.kind, image.shape[:2])[0]
                r = evaluate_prediction(depth[0, 0].numpy(), "disparity", False, sample.gt, sample.gt_kind)
                row.append((r["rel"], r["d3r"], r["dbe_comp"]))
            rows.append(row)
        low_m, best_m = np.array(rows, dtype=float).mean(0)
        ratio = best_m / low_m
        print(f"{args.candidates} {args.noise} {ds}: LOW REL/D3R/DBE {np.round(low_m, 4).tolist()} "
              f"oracle {np.round(best_m, 4).tolist()} ratios {np.round(ratio, 2).tolist()}", flush=True)


if __name__ == "__main__":
    main()
