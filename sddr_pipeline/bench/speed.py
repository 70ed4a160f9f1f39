"""``sddr bench speed``: predictor vs SDDR refiner cost, side by side in one run.

Everything is timed in fp32 with one thread count, as medians of interleaved
repetitions (each repetition times every item once, so drift and noise hit all items
alike). Items:

- ``predictor_ms``: the Depth Anything V2 Small ARCHITECTURE (transformers config,
  random weights: cost does not depend on weight values) on a square input of 518 and
  1036 px.
- ``one_stage_ms``: one-stage SDDR refiner work only, predictions precomputed (a 384 px
  LOW and an N px HIGH map, square): disparity conversion, normalisation, padding,
  resizing, the network, and restoring units at N x N (no edge map G, as `sddr refine`).
- ``two_stage_ms``: coarse-to-fine refinement at 1024 with the default steps and window
  policy, refiner work only: window predictions are precomputed and served from a
  cache, so predictor cost is excluded (no full-size edge map G either, like one-stage).
- ``peak_mem_mb``: the process's peak resident memory after the run.
"""
from __future__ import annotations

import gc
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..models import Refiner
from ..predictors.base import BasePredictor, SampleContext

PRESETS_TIMED = ("sddr-small", "sddr-paper")


@dataclass(frozen=True)
class SpeedBenchConfig:
    reps: int = 5
    threads: int | None = None
    device: str = "cpu"
    sizes: tuple[int, ...] = (512, 1024, 2048)
    predictor_sizes: tuple[int, ...] = (518, 1036)
    two_stage_size: int = 1024
    presets: tuple[str, ...] = field(default=PRESETS_TIMED)


def depth_anything_v2_small(device: str = "cpu") -> torch.nn.Module:
    """The Depth Anything V2 Small architecture from its transformers config, random weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518,
        out_indices=[3, 6, 9, 12], reshape_hidden_states=False, apply_layernorm=True,
    )
    cfg = DepthAnythingConfig(
        backbone_config=backbone, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64,
        head_hidden_size=32, reassemble_hidden_size=384, patch_size=14,
    )
    torch.manual_seed(0)
    return DepthAnythingForDepthEstimation(cfg).eval().to(device)


class _CachedPredictor(BasePredictor):
    """Serves predictions computed once by a wrapped predictor (keyed by crop and size)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.name = f"cached({inner.name})"
        self.default_resolutions = getattr(inner, "default_resolutions", None)
        self.cache: dict = {}
        self.frozen = False

    def predict(self, image: np.ndarray, resolution: int, context: SampleContext | None = None) -> np.ndarray:
        key = (context.crop if context else None, resolution, image.shape)
        if key not in self.cache:
            if self.frozen:
                raise KeyError(f"prediction {key} was not precomputed")
            self.cache[key] = self.inner.predict(image, resolution, context)
        return self.cache[key]


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000.0, 2)


def preset_refiner(spec: str) -> Refiner:
    """An untrained refiner of ``spec``: a preset name, optionally with config changes that
    keep its parameters, as ``sddr-small+head_scale=2,fusion_median=3`` (values JSON)."""
    name, _, changes = spec.partition("+")
    refiner = Refiner.from_config(name, seed=0)
    if not changes:
        return refiner
    values = {}
    for item in changes.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{spec!r}: {item!r} is not KEY=VALUE")
        values[key.strip()] = json.loads(value)
    return refiner.with_config(**values)


def run_speed_bench(cfg: SpeedBenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    from ..data import make_scene
    from ..inference.core import finish, refine_predictions
    from ..inference.options import RefineOptions
    from ..inference.orchestrate import refine
    from ..predictors import OutputKind, get_predictor

    say = progress or (lambda s: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    dev = cfg.device
    rng = np.random.default_rng(0)
    items: dict[str, Callable[[], object]] = {}

    da = depth_anything_v2_small(dev)
    for s in cfg.predictor_sizes:
        x = torch.rand(1, 3, s, s, device=dev)

        def run_pred(x=x):
            with torch.inference_mode():
                return da(pixel_values=x).predicted_depth

        items[f"predictor/{s}"] = run_pred

    kind = OutputKind("disparity", False)
    refiners = {p: preset_refiner(p).to(dev) for p in cfg.presets}
    low = rng.random((384, 384), dtype=np.float32)
    for p, ref in refiners.items():
        for n in cfg.sizes:
            high = rng.random((n, n), dtype=np.float32)

            one = RefineOptions(edges=False).resolved(None, ref)

            def run_one(ref=ref, high=high, n=n, one=one):
                maps = refine_predictions(low, high, kind, ref, one.range_clamp)
                return finish(maps, kind, (n, n), low, high, one, {}, None)

            items[f"one_stage/{p}/{n}"] = run_one

    n2 = cfg.two_stage_size
    if n2:
        scene = make_scene(n2, n2, seed=0)
        ctx = SampleContext(name="bench", gt=scene.depth, gt_kind="depth")
        cached = _CachedPredictor(get_predictor("simulated"))
        two = RefineOptions(mode="two-stage", edges=False)
        for p, ref in refiners.items():
            refine(scene.rgb, cached, ref, two, context=ctx, edges=True)  # fills the cache

            def run_two(ref=ref):
                return refine(scene.rgb, cached, ref, two, context=ctx)

            items[f"two_stage/{p}/{n2}"] = run_two
        cached.frozen = True

    say(f"warming up {len(items)} items ({threads} threads, {dev})")
    for fn in items.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in items}
    for rep in range(cfg.reps):
        for key, fn in items.items():
            gc.collect()
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev == "cuda":
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - t0)
        say(f"repetition {rep + 1}/{cfg.reps} done")

    med = {k: _median_ms(v) for k, v in times.items()}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = {
        "predictor_ms": {str(s): med[f"predictor/{s}"] for s in cfg.predictor_sizes},
        "one_stage_ms": {p: {str(n): med[f"one_stage/{p}/{n}"] for n in cfg.sizes} for p in cfg.presets},
        "two_stage_ms": {p: {str(n2): med[f"two_stage/{p}/{n2}"]} for p in cfg.presets} if n2 else {},
        "peak_mem_mb": round(peak_kb / 1024.0 if sys.platform != "darwin" else peak_kb / 2**20, 1),
        "threads": threads,
        "device": dev if dev != "cuda" else torch.cuda.get_device_name(0),
        "reps": cfg.reps,
        "parameters": {p: r.num_parameters() for p, r in refiners.items()},
        "samples_ms": {k: [round(t * 1000, 2) for t in v] for k, v in times.items()},
    }
    report["ratios"] = _ratios(report, cfg)
    return report


def _ratios(report: dict, cfg: SpeedBenchConfig) -> dict:
    out: dict[str, float] = {}
    base = report["predictor_ms"].get("518")
    for p in cfg.presets:
        one = report["one_stage_ms"][p]
        if base and "1024" in one:
            out[f"{p} one-stage@1024 / predictor@518"] = round(one["1024"] / base, 3)
        two = report["two_stage_ms"].get(p, {}).get(str(cfg.two_stage_size))
        if two and str(cfg.two_stage_size) in one:
            out[f"{p} two-stage@{cfg.two_stage_size} / one-stage@{cfg.two_stage_size}"] = round(two / one[str(cfg.two_stage_size)], 3)
    return out


def format_report(report: dict) -> str:
    lines = [f"device {report['device']}, {report['threads']} threads, medians of {report['reps']} interleaved repetitions (ms)"]
    for s, v in report["predictor_ms"].items():
        lines.append(f"  Depth Anything V2 Small @ {s:>4}: {v:9.1f}")
    for p, d in report["one_stage_ms"].items():
        for n, v in d.items():
            lines.append(f"  {p:<10} one-stage @ {n:>4}: {v:9.1f}")
    for p, d in report["two_stage_ms"].items():
        for n, v in d.items():
            lines.append(f"  {p:<10} two-stage @ {n:>4}: {v:9.1f}")
    lines.append(f"  peak memory: {report['peak_mem_mb']} MB")
    lines.append("ratios:")
    for k, v in report["ratios"].items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)
