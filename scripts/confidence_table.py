"""The confidence validation table of docs/INTEGRATIONS.md ("Confidence"), measured.

Usage (from the repository root)::

    .venv/bin/python scripts/confidence_table.py --markdown out/confidence_table.md

Each row runs :func:`sddr_pipeline.confidence.evaluate_confidence` (maps made metric with
200 sparse ground-truth depths per image; error |d - gt| / gt on valid pixels, pooled)
and prints mean AbsRel and the AUSE of each ordering, with its ratio to random's.
"""
from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import torch

from sddr_pipeline.confidence import evaluate_confidence
from sddr_pipeline.data import open_dataset
from sddr_pipeline.models import Refiner
from sddr_pipeline.predictors import get_predictor

#: (label, dataset, predictor spec, weights: "untrained:PRESET" or a from_pretrained name)
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("untrained `sddr-small` (as in the test)", "middlebury2014q", "simulated:low=192,high=512", "untrained:sddr-small"),
    ("bundled `default`, simulated at its defaults (LOW 384 / HIGH 1024)", "middlebury2014q", "simulated", "default"),
    ("bundled `default`, `nyu_sample`, same settings", "nyu_sample", "simulated", "default"),
)
ORDERINGS = ("random", "confidence", "omega", "edge_distance")


def _refiner(spec: str) -> Refiner:
    if spec.startswith("untrained:"):
        return Refiner.from_config(spec.split(":", 1)[1], seed=0)
    return Refiner.from_pretrained(spec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("SDDR_SHARED_DATA", "../shared/data"))
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lines = ["| refiner | data (pixels) | mean AbsRel | AUSE random | AUSE confidence | AUSE omega | AUSE edge term alone |",
             "|---|---|---|---|---|---|---|"]
    for label, dataset, predictor, weights in ROWS:
        refiner = _refiner(weights)
        samples = list(open_dataset(Path(args.data) / dataset))
        report = evaluate_confidence(samples, get_predictor(predictor), refiner)
        rand = report.ause["random"]
        cells = [f"{report.ause[k]:.5f}" + ("" if k == "random" else f" ({report.ause[k] / rand:.2f}x)") for k in ORDERINGS]
        lines.append(f"| {label} | {dataset}, {len(samples)} images ({report.pixels:,} px) | {report.mean_error:.4f} | "
                     + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    stamp = f"Measured {datetime.date.today().isoformat()} in {time.perf_counter() - t0:.0f} s ({args.threads} threads)."
    text = "\n".join(lines) + "\n\n" + stamp + "\n"
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    print(stamp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
