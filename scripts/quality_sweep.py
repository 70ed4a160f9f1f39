"""Quality bar sweep: `sddr eval` over several simulated-noise settings and seeds.

Usage (from the repository root)::

    .venv/bin/python scripts/quality_sweep.py --weights default --json out/sweep.json

For each validation dataset, noise setting (cons/edge/texture) and simulated-noise seed it
runs :func:`sddr_pipeline.evaluation.evaluate_dataset` with the ``simulated`` predictor
and prints one markdown table row per method, plus the issue's quality-bar checks:
one-stage D3R <= 0.7 x low's and below both baselines; ORD below low and high; DBE_comp
below low; delta1 no more than 0.005 below low's; two-stage D3R and DBE_comp below
one-stage's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from sddr_pipeline.evaluation import evaluate_dataset
from sddr_pipeline.inference import RANGE_CLAMP
from sddr_pipeline.models import Refiner

SETTINGS = (
    {"cons": 0.15, "edge": 2.0, "texture": 0.3},
    {"cons": 0.3, "edge": 4.0, "texture": 0.5},
    {"cons": 0.05, "edge": 1.0, "texture": 0.1},
)
SEEDS = (0, 1)
KEYS = ("delta1", "rel", "ord", "d3r", "dbe_acc", "dbe_comp", "bf1")


def checks(m: dict) -> dict[str, bool | None]:
    def get(name: str, key: str):
        return m.get(name, {}).get(key)

    one, low = m["sddr_one_stage"], m["low"]
    out: dict[str, bool | None] = {}
    if one["d3r"] is not None and low["d3r"] is not None:
        out["d3r<=0.7low"] = one["d3r"] <= 0.7 * low["d3r"]
        out["d3r<baselines"] = one["d3r"] < get("freq_merge", "d3r") and one["d3r"] < get("guided", "d3r")
    if one["ord"] is not None:
        out["ord<low,high"] = one["ord"] < low["ord"] and one["ord"] < get("high", "ord")
    if one["dbe_comp"] is not None:
        out["dbe_comp<low"] = one["dbe_comp"] < low["dbe_comp"]
    out["delta1>=low-0.005"] = one["delta1"] >= low["delta1"] - 0.005
    two = m.get("sddr_two_stage")
    if two and two["d3r"] is not None:
        out["two:d3r<one"] = two["d3r"] < one["d3r"]
        out["two:dbe_comp<one"] = two["dbe_comp"] < one["dbe_comp"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="default")
    p.add_argument("--data", default=os.environ.get("SDDR_SHARED_DATA", "../shared/data"))
    p.add_argument("--datasets", nargs="+", default=["middlebury2014q", "nyu_sample"])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--no-two-stage", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--range-clamp", type=float, default=RANGE_CLAMP,
                   help="local-range clamp of the SDDR maps, fraction of the long side; 0 = raw network output (default: 1/128)")
    p.add_argument("--markdown", type=Path, default=None,
                   help="also write both tables (results, checks) as markdown here; or pass --from-json to only convert")
    p.add_argument("--from-json", type=Path, default=None, help="convert an earlier --json file to --markdown, running nothing")
    args = p.parse_args()
    if args.from_json is not None:
        if args.markdown is None:
            p.error("--from-json needs --markdown")
        data = json.loads(args.from_json.read_text())
        args.markdown.write_text(markdown(data["refiner"], data["results"]))
        return 0
    torch.set_num_threads(args.threads)
    refiner = Refiner.from_pretrained(args.weights)
    results = []
    print("| dataset | cons | edge | texture | seed | method | " + " | ".join(KEYS) + " |")
    print("|" + "---|" * (6 + len(KEYS)))
    for ds in args.datasets:
        for s in SETTINGS:
            for seed in SEEDS:
                spec = f"simulated:cons={s['cons']},edge={s['edge']},texture={s['texture']},seed={seed}"
                r = evaluate_dataset(Path(args.data) / ds, spec, refiner, two_stage=not args.no_two_stage, progress=False,
                                     range_clamp=args.range_clamp)
                m = r["methods"]
                for name, vals in m.items():
                    cells = " | ".join("-" if vals[k] is None else f"{vals[k]:.4f}" for k in KEYS)
                    print(f"| {ds} | {s['cons']} | {s['edge']} | {s['texture']} | {seed} | {name} | {cells} |", flush=True)
                c = checks(m)
                print(f"<!-- checks {ds} {spec}: {c} -->", flush=True)
                results.append({"dataset": ds, "spec": spec, "methods": m, "checks": c})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"refiner": refiner.version, "range_clamp": args.range_clamp, "results": results}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(refiner.version, results))
    return 0


CHECK_LABELS = {
    "d3r<=0.7low": "one-stage D3R <= 0.7x low",
    "d3r<baselines": "D3R < both baselines",
    "ord<low,high": "ORD < low and high",
    "dbe_comp<low": "DBE_comp < low",
    "delta1>=low-0.005": "delta1 >= low - 0.005",
    "two:d3r<one": "two-stage D3R < one-stage",
    "two:dbe_comp<one": "two-stage DBE_comp < one-stage",
}


def _noise(spec: str) -> str:
    opts = dict(kv.split("=") for kv in spec.split(":", 1)[1].split(","))
    return f"{opts['cons']}/{opts['edge']}/{opts['texture']}, {opts['seed']}"


def markdown(version: str, results: list[dict]) -> str:
    """The results table (one row per method) and the checks table (one row per run)."""
    lines = [f"Refiner `{version}`. Means over each dataset's images; lower is better except delta1 and BF1.", "",
             "| dataset | noise (cons/edge/texture, seed) | method | " + " | ".join(KEYS) + " |",
             "|---|---|---|" + "---|" * len(KEYS)]
    for r in results:
        for name, vals in r["methods"].items():
            cells = " | ".join("-" if vals[k] is None else f"{vals[k]:.4f}" for k in KEYS)
            lines.append(f"| {r['dataset']} | {_noise(r['spec'])} | {name} | {cells} |")
    lines += ["", "| dataset | noise | " + " | ".join(CHECK_LABELS.values()) + " |",
              "|---|---|" + "---|" * len(CHECK_LABELS)]
    for r in results:
        c = r["checks"]
        cells = " | ".join({True: "yes", False: "**no**", None: "-"}[c.get(k)] for k in CHECK_LABELS)
        lines.append(f"| {r['dataset']} | {_noise(r['spec'])} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
