"""Regenerate docs/QUALITY.md and the bundled weights' model card tables from one sweep of the quality bar.

Usage (from the repository root)::

    .venv/bin/python scripts/quality_report.py --checkpoint checkpoints/long/step-024000.json
    .venv/bin/python scripts/quality_report.py --from-json docs/quality/bar.json --checkpoint ...   # render only

The first form scores the bundled ``default`` weights on the whole bar of
``scripts/quality_sweep.py`` (every validation source, the four noise settings, seeds 0
and 1, one- and two-stage, at the weights' own settings) and writes the record to
``docs/quality/bar.json``. Both forms then write ``docs/QUALITY.md`` (the verdict, a ratio
table per cell, every metric) and rewrite the generated blocks of
``sddr_pipeline/weights/default/MODEL_CARD.md``: the training facts of ``--checkpoint``
(the run the weights were exported from: recipe, stages, steps, logged time) and the
validation table. Hand-written text of the card outside those blocks is kept; the
experiments behind the design are in docs/QUALITY_HISTORY.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path

import quality_sweep as qs

ROOT = Path(__file__).resolve().parents[1]
BAR_JSON = Path("docs/quality/bar.json")
QUALITY_MD = Path("docs/QUALITY.md")
CARD = Path("sddr_pipeline/weights/default/MODEL_CARD.md")

GROUPS = {
    "never worse": ("rel<=1.02low", "d3r<=low"),
    "sharper": ("d3r<=0.6low", "dbe<=0.7low", "d3r<=min(low,fm)"),
    "coarse-to-fine helps": ("two:d3r<=one", "two:dbe<=one", "two:rel<=1.02one"),
}


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def verdict_table(cells: list[dict]) -> str:
    """Pass / fail / undefined counts of each group of the bar's checks."""
    lines = ["| group | checks | pass | fail | undefined |", "|---|---|---|---|---|"]
    total_pass = total = 0
    for group, keys in GROUPS.items():
        values = [c["checks"].get(k) for c in cells for k in keys if k in c["checks"]]
        n_pass, n_fail = sum(v is True for v in values), sum(v is False for v in values)
        total_pass, total = total_pass + n_pass, total + n_pass + n_fail
        labels = "; ".join(qs.CHECK_LABELS[k] for k in keys)
        lines.append(f"| {group} | {labels} | {n_pass} | {n_fail} | {len(values) - n_pass - n_fail} |")
    lines += ["", f"**{total_pass} of {total} defined checks pass.**"]
    return "\n".join(lines) + "\n"


def ratio_table(cells: list[dict]) -> str:
    """Per cell: one-stage REL / D3R / DBE_comp as ratios to LOW's, two-stage's as ratios to
    one-stage's, and the checks that fail."""
    lines = ["| dataset | noise | one / LOW: REL | D3R | DBE_comp | two / one: REL | D3R | DBE_comp | failed checks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        m = c["means"]
        low, one, two = m["low"], m["sddr_one_stage"], m.get("sddr_two_stage")
        ones = [_ratio(one[k], low[k]) for k in ("rel", "d3r", "dbe_comp")]
        twos = [_ratio(two[k], one[k]) for k in ("rel", "d3r", "dbe_comp")] if two else ["-"] * 3
        failed = ", ".join(qs.CHECK_LABELS[k] for k, v in c["checks"].items() if v is False) or "none"
        lines.append(f"| {c['dataset']} | {qs._noise(c['setting'])} | " + " | ".join(ones + twos) + f" | {failed} |")
    return "\n".join(lines) + "\n"


def training_facts(checkpoint: Path, weights: Path) -> str:
    """The run behind the weights, from its checkpoint record and its log, and the
    exported weights file's size and sha256."""
    from sddr_pipeline.io.hashing import sha256_files

    record = json.loads(checkpoint.read_text())
    cfg = record["config"]
    step = int(record["step"])
    seconds: dict[int, float] = {}
    log = checkpoint.parent / "log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if "seconds" in entry and entry.get("step", 0) <= step:
                seconds[entry["step"]] = float(entry["seconds"])
    done, stages = 0, []
    for st in cfg["stages"]:
        ran = max(0, min(step - done, st["steps"]))
        stages.append(f"{st['kind']} {ran:,} of {st['steps']:,}")
        done += st["steps"]
    noise = cfg["noise"]
    rows = [
        ("run", f"`{checkpoint.parent}/{checkpoint.name}` (step {step:,} of {record['total_steps']:,})"),
        ("recipe", f"`sddr train --config long` (`sddr_pipeline/training/recipes/long.yaml`), seed {cfg['seed']}"),
        ("architecture", f"`{cfg['preset']}` at export, weight average (ema {cfg.get('ema')})"),
        ("stages", "; ".join(stages)),
        ("batch / crops", f"{cfg['batch_size']} / {cfg['crop']} px, scale {cfg['crop_scale']}, flips {cfg['flip']}"),
        ("optimiser", f"AdamW lr {cfg['lr']:g} {cfg['lr_schedule']} (warm-up {cfg['warmup_steps']}, floor "
                      f"{cfg['min_lr_ratio']:g}x), weight decay {cfg['weight_decay']:g}, grad clip {cfg['grad_clip']:g}"),
        ("loss", ", ".join(f"{k} {v:g}" for k, v in cfg["loss"].items() if isinstance(v, (int, float)) and v)),
        ("predictor during training", f"`{cfg['predictor']}` at LOW {cfg['low_res']} / HIGH {cfg['high_res']} px; noise "
                                      f"cons {noise['cons']}, edge {noise['edge']} px, texture {noise['texture']}, "
                                      f"clean {noise['clean']:g}, mixed {noise['mixed']:g}"
                                      + (f", sharp LOW {noise['sharp_low']:g}" if noise.get("sharp_low") else "")),
        ("data", "; ".join(" ".join(filter(None, [d["kind"], Path(d["root"]).name if d.get("root") else ""]))
                           + f" (weight {d['weight']:g})" for d in cfg["data"])),
        ("logged step time", f"{sum(seconds.values()) / 3600:.2f} h over {len(seconds):,} logged steps "
                             f"(one torch thread on a 2-core CPU machine, shared with other work)"),
    ]
    shipped = json.loads((weights.parent / "config.json").read_text())
    rows.append(("weights file", f"`model.safetensors` (fp16, {weights.stat().st_size / 1e6:.1f} MB), sha256 "
                                 f"`{sha256_files(weights)}`, written by `sddr export {checkpoint} "
                                 f"sddr_pipeline/weights/default --set range_clamp={shipped['range_clamp']:g}"
                                 + (f" --set fusion_temperature={shipped['fusion_temperature']:g}"
                                    if shipped.get("fusion_temperature", 1.0) != 1.0 else "") + "`"))
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def quality_markdown(record: dict) -> str:
    cells = record["cells"]
    datasets = sorted({c["dataset"] for c in cells}, key=qs.DATASETS.index)
    return "\n".join([
        "# Refiner quality",
        "",
        "Generated by `scripts/quality_report.py` from `docs/quality/bar.json`; do not edit by hand. "
        "The experiments that chose the design and the recipe are in [QUALITY_HISTORY.md](QUALITY_HISTORY.md).",
        "",
        f"- **Weights:** `{record['refiner']}` (the bundled `default`), at their own settings: "
        f"network max side {record.get('max_side', '?')} px, range clamp {record['range_clamp']:g}, "
        f"fusion temperature {record.get('fusion_temperature', 1.0):g}.",
        f"- **Sweep:** {', '.join(datasets)}; noise settings (cons/edge/texture) "
        f"{', '.join(qs._noise(s) for s in qs.SETTINGS)}; seeds {record['seeds']}; the `simulated` predictor "
        "(real ground truth, simulated LOW 384 / HIGH 1024 predictions: no real depth network's weights can be "
        "downloaded here); one- and two-stage. A cell is one dataset at one setting, its numbers the mean over seeds.",
        f"- **Command:** `{record.get('command', '?')}` ({record.get('wall_s', 0) / 60:.0f} min, {record.get('date', '?')}).",
        "",
        "## Verdict",
        "",
        verdict_table(cells),
        "## Per cell",
        "",
        "Ratios below 1 are improvements. D3R and DBE need dense ground truth, so they are undefined (-) on KITTI.",
        "",
        ratio_table(cells),
        "## Every metric",
        "",
        qs.markdown(record["refiner"], cells, tuple(record["seeds"])),
    ])


def replace_block(text: str, name: str, body: str) -> str:
    """Replace what lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``."""
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{CARD}: no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="the training checkpoint the default weights were exported from")
    p.add_argument("--from-json", type=Path, default=None,
                   help="render an earlier sweep of the bundled weights (bar.json, or a quality_sweep.py --json of the same weights, then copied to bar.json), running nothing")
    p.add_argument("--data", default=os.environ.get("SDDR_SHARED_DATA", "../shared/data"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    os.chdir(ROOT)
    if args.from_json is not None:
        from sddr_pipeline.models import Refiner

        record = json.loads(args.from_json.read_text())
        shipped = Refiner.from_pretrained("default")
        scored = (record.get("refiner"), float(record.get("range_clamp", -1)), float(record.get("fusion_temperature", 1.0)))
        if scored != (shipped.version, shipped.config.range_clamp, shipped.config.fusion_temperature):
            raise SystemExit(f"{args.from_json} scored {scored[0]} (range clamp {scored[1]:g}, fusion temperature "
                             f"{scored[2]:g}), not the bundled weights {shipped.version} (range clamp "
                             f"{shipped.config.range_clamp:g}, fusion temperature {shipped.config.fusion_temperature:g})")
        missing = {"max_side", "seeds", "wall_s", "command", "cells"} - set(record)
        if missing:
            raise SystemExit(f"{args.from_json} lacks {', '.join(sorted(missing))}: not a full sweep record")
        if args.from_json.resolve() != BAR_JSON.resolve():
            BAR_JSON.write_text(json.dumps(record, indent=1) + "\n")
    else:
        import torch

        from sddr_pipeline.inference import RefineOptions
        from sddr_pipeline.models import Refiner

        torch.set_num_threads(args.threads)
        refiner = Refiner.from_pretrained("default")
        clamp = RefineOptions().resolved(None, refiner).range_clamp
        start = time.perf_counter()
        cells = qs.run_sweep(refiner, Path(args.data), list(qs.DATASETS), list(range(len(qs.SETTINGS))),
                             list(qs.SEEDS), range_clamp=clamp)
        record = {"refiner": refiner.version, "range_clamp": clamp, "max_side": refiner.config.max_side,
                  "fusion_temperature": refiner.config.fusion_temperature,
                  "seeds": list(qs.SEEDS), "wall_s": round(time.perf_counter() - start, 1),
                  "date": dt.date.today().isoformat(), "threads": args.threads,
                  "command": "scripts/quality_report.py --checkpoint " + str(args.checkpoint), "cells": cells}
        BAR_JSON.parent.mkdir(parents=True, exist_ok=True)
        BAR_JSON.write_text(json.dumps(record, indent=1) + "\n")
    QUALITY_MD.write_text(quality_markdown(record))
    card = CARD.read_text()
    card = replace_block(card, "training", training_facts(args.checkpoint, CARD.parent / "model.safetensors"))
    card = replace_block(card, "bar", verdict_table(record["cells"]) + "\n" + ratio_table(record["cells"]))
    CARD.write_text(card)
    print(f"wrote {QUALITY_MD} and the tables of {CARD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
