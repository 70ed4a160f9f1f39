"""Refiner quality bar: `evaluate_dataset` over every validation source, noise setting and seed.

Usage (from the repository root)::

    .venv/bin/python scripts/quality_sweep.py --weights default --json out/sweep.json --markdown out/sweep.md

Validation sources (the split of ../shared/data/README.md; training never reads them):
middlebury2014q, nyu_sample, rgbd_sequence_sample (dense exact depth), kitti_sample
(sparse: value metrics only) and ``synthetic``, a fixed set of held-out synthetic scenes
(seeds >= 2**62, never drawn in training) written once under ``--cache``.

Each dataset runs with the ``simulated`` predictor at the four noise settings of
:data:`SETTINGS` and the seeds of :data:`SEEDS`. A CELL is one dataset at one setting:
its metrics are the mean over seeds of the dataset means. The bar (the refiner-quality
issue) is checked per cell:

* never worse: one-stage REL <= 1.02x LOW's (1.1x at zero noise), D3R <= LOW's;
* sharper: at 0.15/2/0.3 and 0.3/4/0.5, one-stage D3R <= 0.6x LOW's and DBE_comp <= 0.7x
  LOW's; in every cell D3R <= min(LOW's, freq_merge's);
* coarse-to-fine helps: in cells with noise, two-stage D3R and DBE_comp <= one-stage's and
  REL <= 1.02x one-stage's.

A check whose metric is undefined (e.g. D3R on KITTI's sparse ground truth) prints "-".
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from sddr_pipeline.evaluation import evaluate_dataset
from sddr_pipeline.inference import RANGE_CLAMP, RefineOptions
from sddr_pipeline.models import Refiner
from sddr_pipeline.training.samples import validation_scenes
from sddr_pipeline.training.trainer import refiner_from_checkpoint

SETTINGS = (
    {"cons": 0.0, "edge": 0.0, "texture": 0.0},
    {"cons": 0.05, "edge": 1.0, "texture": 0.1},
    {"cons": 0.15, "edge": 2.0, "texture": 0.3},
    {"cons": 0.3, "edge": 4.0, "texture": 0.5},
)
SEEDS = (0, 1)
DATASETS = ("middlebury2014q", "nyu_sample", "rgbd_sequence_sample", "kitti_sample", "synthetic")
KEYS = ("delta1", "rel", "ord", "d3r", "dbe_acc", "dbe_comp", "bf1")
#: held-out synthetic validation scenes: count and size
SYNTHETIC = (8, (384, 512))

CHECK_LABELS = {
    "rel<=1.02low": "REL <= 1.02x LOW (1.1x at zero noise)",
    "d3r<=low": "D3R <= LOW",
    "d3r<=0.6low": "D3R <= 0.6x LOW",
    "dbe<=0.7low": "DBE_comp <= 0.7x LOW",
    "d3r<=min(low,fm)": "D3R <= min(LOW, freq_merge)",
    "two:d3r<=one": "two-stage D3R <= one",
    "two:dbe<=one": "two-stage DBE_comp <= one",
    "two:rel<=1.02one": "two-stage REL <= 1.02x one",
}


def synthetic_root(cache: Path) -> Path:
    """The held-out synthetic scenes as a ``generic`` dataset under ``cache`` (made once)."""
    root = cache / "synthetic_validation"
    count, size = SYNTHETIC
    if (root / "dataset.json").exists() and len(list((root / "gt").glob("*.npy"))) == count:
        return root
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    for rgb, depth, name in validation_scenes(count, size):
        Image.fromarray(rgb).save(root / "rgb" / f"{name}.png")
        np.save(root / "gt" / f"{name}.npy", depth.astype(np.float32))
    (root / "dataset.json").write_text(json.dumps({"gt_kind": "depth"}) + "\n")
    return root


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if len(vals) == len(values) and vals else None


def cell_means(runs: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per method and metric, the mean over the runs (seeds) of one cell."""
    methods = runs[0]["methods"]
    return {m: {k: _mean([r["methods"][m][k] for r in runs]) for k in KEYS} for m in methods}


def checks(m: dict, setting: dict) -> dict[str, bool | None]:
    """The bar's checks for one cell (see the module docstring); None = undefined."""
    def le(a, b, factor=1.0):
        return None if a is None or b is None else bool(a <= factor * b)

    low, one, fm = m["low"], m["sddr_one_stage"], m["freq_merge"]
    noisy = any(setting[k] > 0 for k in ("cons", "edge", "texture"))
    strong = setting["cons"] >= 0.15
    out: dict[str, bool | None] = {
        "rel<=1.02low": le(one["rel"], low["rel"], 1.02 if noisy else 1.1),
        "d3r<=low": le(one["d3r"], low["d3r"]),
        "d3r<=0.6low": le(one["d3r"], low["d3r"], 0.6) if strong else None,
        "dbe<=0.7low": le(one["dbe_comp"], low["dbe_comp"], 0.7) if strong else None,
        "d3r<=min(low,fm)": None if low["d3r"] is None or fm["d3r"] is None else le(one["d3r"], min(low["d3r"], fm["d3r"])),
    }
    two = m.get("sddr_two_stage")
    if two is not None and noisy:
        out["two:d3r<=one"] = le(two["d3r"], one["d3r"])
        out["two:dbe<=one"] = le(two["dbe_comp"], one["dbe_comp"])
        out["two:rel<=1.02one"] = le(two["rel"], one["rel"], 1.02)
    return out


def _noise(s: dict) -> str:
    return f"{s['cons']:g}/{s['edge']:g}/{s['texture']:g}"


def markdown(version: str, cells: list[dict], seeds: tuple[int, ...]) -> str:
    """The results table (one row per cell and method, seed means) and the checks table."""
    lines = [f"Refiner `{version}`. Means over each dataset's images, then over seeds {list(seeds)}; "
             "lower is better except delta1 and BF1. D3R/LOW is the one-stage ratio the bar reads.", "",
             "| dataset | noise (cons/edge/texture) | method | " + " | ".join(KEYS) + " | D3R/LOW |",
             "|---|---|---|" + "---|" * (len(KEYS) + 1)]
    for c in cells:
        low_d3r = c["means"]["low"]["d3r"]
        for name, vals in c["means"].items():
            cells_ = " | ".join("-" if vals[k] is None else f"{vals[k]:.4f}" for k in KEYS)
            ratio = "-" if vals["d3r"] is None or not low_d3r else f"{vals['d3r'] / low_d3r:.2f}"
            lines.append(f"| {c['dataset']} | {_noise(c['setting'])} | {name} | {cells_} | {ratio} |")
    lines += ["", "| dataset | noise | " + " | ".join(CHECK_LABELS.values()) + " |",
              "|---|---|" + "---|" * len(CHECK_LABELS)]
    passed = failed = 0
    for c in cells:
        ch = c["checks"]
        passed += sum(v is True for v in ch.values())
        failed += sum(v is False for v in ch.values())
        row = " | ".join({True: "yes", False: "**no**", None: "-"}[ch.get(k)] for k in CHECK_LABELS)
        lines.append(f"| {c['dataset']} | {_noise(c['setting'])} | {row} |")
    lines += ["", f"{passed} checks pass, {failed} fail."]
    return "\n".join(lines) + "\n"


def compare(paths: list[Path]) -> str:
    """One-stage ratios to LOW (REL, D3R, DBE_comp) of several sweeps side by side, per
    cell, with the number of failed checks: a design comparison on one table."""
    runs = [json.loads(p.read_text()) for p in paths]
    names = [p.stem for p in paths]
    head = "| dataset | noise | " + " | ".join(f"{n} REL/D3R/DBE vs LOW" for n in names) + " |"
    lines = [head, "|---|---|" + "---|" * len(names)]
    keys = [(c["dataset"], _noise(c["setting"])) for c in runs[0]["cells"]]
    for ds, noise in keys:
        row = []
        for r in runs:
            c = next((c for c in r["cells"] if c["dataset"] == ds and _noise(c["setting"]) == noise), None)
            if c is None:
                row.append("-")
                continue
            one, low = c["means"]["sddr_one_stage"], c["means"]["low"]
            ratios = ["-" if one[k] is None or not low[k] else f"{one[k] / low[k]:.2f}" for k in ("rel", "d3r", "dbe_comp")]
            fails = sum(v is False for v in c["checks"].values())
            row.append(" / ".join(ratios) + f" ({fails} fail)")
        lines.append(f"| {ds} | {noise} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def run_sweep(refiner: Refiner, data: Path, datasets: list[str], settings: list[int], seeds: list[int],
              cache: Path = Path("out/quality_cache"), limit: int | None = None, two_stage: bool = True,
              range_clamp: float | None = None, say: Callable[[str], None] | None = None) -> list[dict]:
    """Score ``refiner`` on every dataset x setting (indices into :data:`SETTINGS`) x seed;
    one dict per cell: its seed means, the bar's checks and each seed's methods."""
    say = say or (lambda line: print(line, flush=True))
    t_start = time.perf_counter()
    cells = []
    for ds in datasets:
        root = synthetic_root(cache) if ds == "synthetic" else data / ds
        for i in settings:
            s = SETTINGS[i]
            runs = []
            for seed in seeds:
                spec = f"simulated:cons={s['cons']},edge={s['edge']},texture={s['texture']},seed={seed}"
                runs.append(evaluate_dataset(root, spec, refiner, limit=limit, two_stage=two_stage,
                                             progress=False, range_clamp=range_clamp))
            means = cell_means(runs)
            c = checks(means, s)
            cells.append({"dataset": ds, "setting": s, "means": means, "checks": c,
                          "per_seed": [r["methods"] for r in runs]})
            one, low = means["sddr_one_stage"], means["low"]
            say(f"{ds:22s} {_noise(s):12s} REL one {one['rel']:.4f} low {low['rel']:.4f}  "
                f"D3R one {_round(one['d3r'])} low {_round(low['d3r'])}  "
                f"fails {[k for k, v in c.items() if v is False]}  ({time.perf_counter() - t_start:.0f}s)")
    return cells


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="default",
                   help="'default', a weights folder or file, or a training checkpoint's step-XXXXXX.json")
    p.add_argument("--data", default=os.environ.get("SDDR_SHARED_DATA", "../shared/data"))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--settings", nargs="+", type=int, default=list(range(len(SETTINGS))),
                   help=f"indices into {[_noise(s) for s in SETTINGS]}")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--limit", type=int, default=None, help="first N images of each dataset")
    p.add_argument("--cache", type=Path, default=Path("out/quality_cache"), help="where the synthetic scenes are written")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--no-two-stage", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--range-clamp", type=float, default=None,
                   help=f"local-range clamp, fraction of the long side; 0 = off (default: the refiner's own: "
                        f"0 for the gated presets and their checkpoints, {RANGE_CLAMP:g} for the residual head)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="score the weights under another refiner setting that changes no parameter shape, e.g. "
                        "head_scale=2 or fusion_median=3 (Refiner.with_config); repeatable")
    p.add_argument("--raw-weights", action="store_true",
                   help="with a checkpoint: its raw weights, not its weight average (training `ema`)")
    p.add_argument("--from-json", type=Path, default=None, help="convert an earlier --json file to --markdown, running nothing")
    p.add_argument("--compare", type=Path, nargs="+", default=None,
                   help="print the one-stage ratios of several --json files side by side, running nothing")
    args = p.parse_args()
    if args.compare:
        print(compare(args.compare), end="")
        return 0
    if args.from_json is not None:
        if args.markdown is None:
            p.error("--from-json needs --markdown")
        data = json.loads(args.from_json.read_text())
        args.markdown.write_text(markdown(data["refiner"], data["cells"], tuple(data["seeds"])))
        return 0
    torch.set_num_threads(args.threads)
    refiner = (refiner_from_checkpoint(args.weights, average=not args.raw_weights) if args.weights.endswith(".json")
               else Refiner.from_pretrained(args.weights))
    if args.override:
        changes = {}
        for item in args.override:
            key, sep, value = item.partition("=")
            if not sep:
                p.error(f"--override takes KEY=VALUE, got {item!r}")
            changes[key] = json.loads(value)
        refiner = refiner.with_config(**changes)
    args.range_clamp = RefineOptions(range_clamp=args.range_clamp).resolved(None, refiner).range_clamp
    start = time.perf_counter()
    cells = run_sweep(refiner, Path(args.data), args.datasets, args.settings, args.seeds, cache=args.cache,
                      limit=args.limit, two_stage=not args.no_two_stage, range_clamp=args.range_clamp)
    text = markdown(refiner.version, cells, tuple(args.seeds))
    print(text.rsplit("\n", 2)[-2])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"refiner": refiner.version, "range_clamp": args.range_clamp, "max_side": refiner.config.max_side,
                  "fusion_temperature": refiner.config.fusion_temperature,
                  "seeds": list(args.seeds), "wall_s": round(time.perf_counter() - start, 1),
                  "date": dt.date.today().isoformat(), "threads": args.threads,
                  "command": "scripts/quality_sweep.py " + " ".join(sys.argv[1:]), "cells": cells}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
