"""Training throughput with and without data workers, side by side in one run.

    .venv/bin/python scripts/bench_training.py [--recipe default] [--steps 40] [--workers 1]

Trains the same recipe twice from step 0 for ``--steps`` stage-``gt`` steps (validation
off, checkpoints only at the end), once making batches in the training process
(``data_workers: 0``) and once in ``--workers`` spawned processes, in alternating order
over ``--repeats`` rounds. Prints wall time and mean logged step time of each, their
ratio, and whether the two runs ended with bitwise identical weights (they must: an
example is a pure function of the seed and its index).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from sddr_pipeline.training import load_config, recipe_path, train


def run(recipe: Path, steps: int, workers: int, out: Path) -> tuple[float, float, Path]:
    """Train; return (wall seconds, mean logged seconds per step, final weights folder)."""
    overrides = {
        "steps": steps, "stages": [{"kind": "gt", "steps": steps}], "validate_every": 0, "checkpoint_every": steps,
        "output": str(out), "data_workers": workers, "warmup_steps": 0,
    }
    config = load_config(recipe, overrides)
    t0 = time.perf_counter()
    final = train(config, resume=False, progress=None)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    per_step = statistics.mean(r["seconds"] for r in records if "seconds" in r)
    return wall, per_step, final


def same_weights(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="default", help="bundled recipe name or YAML path (default: default)")
    parser.add_argument("--steps", type=int, default=40, help="stage-gt steps per run (default: 40)")
    parser.add_argument("--workers", type=int, default=1, help="data workers of the second run (default: 1)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the two runs (default: 1)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.workers < 1 or args.repeats < 1:
        parser.error("--steps, --workers and --repeats must be at least 1 (the baseline run has no workers)")
    recipe = Path(args.recipe) if Path(args.recipe).is_file() else recipe_path(args.recipe)
    results: dict[int, list[tuple[float, float]]] = {0: [], args.workers: []}
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = [0, args.workers] if r % 2 == 0 else [args.workers, 0]
            finals = {}
            for workers in order:
                wall, per_step, finals[workers] = run(recipe, args.steps, workers, Path(tmp) / f"r{r}w{workers}")
                results[workers].append((wall, per_step))
                print(f"round {r + 1}: data_workers={workers}: {wall:.1f} s wall, {per_step:.3f} s/step", flush=True)
            identical &= same_weights(finals[0], finals[args.workers])
    base = statistics.median(w for w, _ in results[0])
    fast = statistics.median(w for w, _ in results[args.workers])
    step0 = statistics.median(s for _, s in results[0])
    step1 = statistics.median(s for _, s in results[args.workers])
    print(f"recipe {recipe.stem}, {args.steps} steps, torch threads per the recipe, {args.repeats} round(s), medians:")
    print(f"  data_workers=0: {base:.1f} s wall, {step0:.3f} s/step")
    print(f"  data_workers={args.workers}: {fast:.1f} s wall, {step1:.3f} s/step")
    print(f"  speed-up: {base / fast:.2f}x wall, {step0 / step1:.2f}x per step; identical weights: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
