"""Score SDDR against its inputs and two training-free baselines on a dataset with GT.

Per image the predictor runs ONCE at the low and once at the high resolution; every
method is built from those same two predictions:

* ``low``: the low-resolution prediction (upsampled to GT size by the metrics),
* ``high``: the high-resolution prediction,
* ``freq_merge`` / ``guided``: :mod:`.baselines` on the pair (made disparity-like),
* ``sddr_one_stage``: the refiner on the pair,
* ``sddr_two_stage``: coarse-to-fine from that one-stage result (its windows are
  predicted again; that is the method).

Every map is scored in the predictor's space and polarity with the same alignment
(:func:`~.metrics.evaluate_prediction`), against one prepared GT per image.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, replace
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__
from ..data import open_dataset
from ..inference.normalize import from_disparity_like
from ..inference.options import RefineOptions
from ..inference.orchestrate import refine
from ..predictors import get_predictor
from ..predictors.base import OutputKind, Predictor
from . import metrics as M
from .baselines import GUIDED_EPS, freq_merge, guided_fusion
from .methods import METHODS



def _from_disparity_like(x: np.ndarray, kind: OutputKind) -> np.ndarray:
    return from_disparity_like(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), kind).numpy()


def method_maps(
    image: np.ndarray,
    context: Any,
    predictor: Predictor,
    refiner: Any,
    options: RefineOptions,
    guided: tuple[int | None, float],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every method's map of one image, in the predictor's space and polarity (low and
    high at their working sizes, the others at image size), with timings in seconds.
    ``options`` are resolved; two-stage ones also score their step-0 (one-stage) result."""
    kind = predictor.kind
    size = image.shape[:2]
    opts = options if options.mode == "one-stage" else replace(options, keep_one_stage=True)
    result = refine(image, predictor, refiner, opts, context=context)
    timings = dict(result.timings)
    one = result if result.one_stage is None else result.one_stage
    maps: dict[str, np.ndarray] = {"low": result.low, "high": result.high, "sddr_one_stage": one.depth}
    if result.one_stage is not None:
        maps["sddr_two_stage"] = result.depth
    t0 = time.perf_counter()
    maps["freq_merge"] = _from_disparity_like(freq_merge(result.low_disp, result.high_disp, size), kind)
    radius, eps = guided
    maps["guided"] = _from_disparity_like(guided_fusion(result.low_disp, result.high_disp, size, radius=radius, eps=eps), kind)
    timings["baselines"] = time.perf_counter() - t0
    timings.pop("finish", None)
    return maps, timings


def score_image(
    image: np.ndarray,
    sample: Any,
    predictor: Predictor,
    refiner: Any,
    options: RefineOptions,
    methods: tuple[str, ...],
    alignment: M.AlignmentMode,
    seed: int,
    guided: tuple[int | None, float],
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """One image's row (every method's scores and the timings), its prepared GT and the
    prepared maps (for the report)."""
    maps, timings = method_maps(image, sample.context(), predictor, refiner, options, guided)
    t1 = time.perf_counter()
    ref = M.prepare_ground_truth(sample.gt, sample.gt_kind, seed=seed)
    kind = predictor.kind
    prepared = {name: M.prepare_prediction(maps[name], kind.space, kind.metric, ref, alignment) for name in methods}
    row: dict[str, Any] = {"name": sample.name}
    for name in methods:
        row[name] = M.score_prediction(prepared[name], ref)
    timings["metrics"] = time.perf_counter() - t1
    row["timings"] = {k: round(float(v), 4) for k, v in timings.items()}
    return row, ref, prepared


def _run_settings(predictor_spec: str, predictor: Predictor, refiner: Any, options: RefineOptions, two_stage: bool,
                  alignment: M.AlignmentMode, guided: tuple[int | None, float]) -> dict[str, Any]:
    """What the scores depend on, for the results' ``config``."""
    fit_kind, fit_space = M.resolve_alignment(alignment, predictor.kind.space, predictor.kind.metric)
    radius, eps = guided
    return {
        "predictor": predictor_spec,
        "predictor_name": getattr(predictor, "name", predictor_spec),
        "predictor_kind": predictor.kind.describe(),
        "refiner": refiner.version,
        "device": str(refiner.device),
        "resolutions": {"low": options.low_res, "high": options.high_res},
        "alignment": {"requested": alignment, "fit": fit_kind, "space": fit_space},
        "two_stage": asdict(options.two_stage) if two_stage else None,
        "range_clamp": options.range_clamp,
        "baselines": {
            "freq_merge": {"resize": "bicubic", "sigma": "long side / 256", "high_alignment": "least squares to low"},
            "guided": {
                "input": "low (bicubic)",
                "guide": "high aligned to low",
                "radius": radius if radius is not None else "long side / 128",
                "eps": eps,
                "eps_units": "low map min-max normalised to [0, 1]",
            },
        },
        "metrics": {
            "slic_segments": M.SLIC_SEGMENTS,
            "slic_compactness": M.SLIC_COMPACTNESS,
            "dense_min_fraction": M.DENSE_MIN_FRACTION,
            "ord_partners": M.ORD_PARTNERS,
            "bf1_thresholds": [round(float(t), 6) for t in M.BF1_THRESHOLDS],
        },
    }


def aggregate(per_image: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Mean of each metric over the images where it is defined, with those counts."""
    out: dict[str, dict[str, Any]] = {}
    for name in methods:
        rows = [img[name] for img in per_image if name in img]
        entry: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for key in M.METRIC_KEYS:
            values = [r[key] for r in rows if r.get(key) is not None]
            counts[key] = len(values)
            entry[key] = float(np.mean(values)) if values else None
        entry["counts"] = counts
        out[name] = entry
    return out


def _load_refiner(refiner: Any, device: str) -> Any:
    from ..models import Refiner

    if isinstance(refiner, (str, os.PathLike)):
        return Refiner.from_pretrained(refiner, device=device)
    return refiner


def evaluate_dataset(
    dataset_root: str | os.PathLike,
    predictor_spec: str,
    refiner: Any,
    layout: str = "auto",
    limit: int | None = None,
    two_stage: bool = True,
    progress: bool = True,
    *,
    alignment: M.AlignmentMode = "auto",
    seed: int = 0,
    guided_radius_px: int | None = None,
    guided_eps: float = GUIDED_EPS,
    report_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    options: RefineOptions | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Score every method of :data:`METHODS` on each image of a dataset (see the module
    docstring); returns ``{"methods", "per_image", "config"}`` (JSON-ready, no NaN).

    ``refiner`` is a :class:`~sddr_pipeline.models.Refiner` or a weights path.
    ``limit`` keeps the first N images (sorted by name). Images without GT are skipped
    and listed under ``config["skipped"]``. With ``report_dir``, an HTML report with one
    composite picture per image is written there (:mod:`.report`). ``options`` (with
    keyword ``changes`` applied, e.g. ``low_res``, ``range_clamp``, ``steps``) say how SDDR
    refines, as for :func:`sddr_pipeline.inference.refine`; ``two_stage`` also scores
    two-stage.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    changes.update(mode="two-stage" if two_stage else "one-stage", edges=False)
    opts = RefineOptions.build(options, **changes)
    refiner = _load_refiner(refiner, "cpu")
    device = str(refiner.device)
    predictor = get_predictor(predictor_spec, device=device)
    opts = opts.resolved(predictor, refiner)
    dataset = open_dataset(dataset_root, layout=layout)
    samples_total = len(dataset)
    count = samples_total if limit is None else min(limit, samples_total)
    if count == 0:
        raise ValueError(f"dataset {dataset_root} ({dataset.layout}) has no images")
    methods = METHODS if two_stage else METHODS[:-1]
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    writer = None
    if report_dir is not None:
        from .report import ReportWriter

        writer = ReportWriter(report_dir, methods)
    per_image: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    t_start = time.perf_counter()
    for index in range(count):
        sample = dataset[index]
        if sample.gt is None:
            skipped.append({"name": sample.name, "reason": "no ground truth"})
            continue
        t0 = time.perf_counter()
        image = sample.image()
        row, ref, prepared = score_image(image, sample, predictor, refiner, opts, methods, alignment, seed,
                                         (guided_radius_px, guided_eps))
        per_image.append(row)
        if writer is not None:
            writer.add_image(sample.name, image, ref, prepared, row)
        if progress:
            say(f"[{index + 1}/{count}] {sample.name}: {time.perf_counter() - t0:.1f} s")
    if not per_image:
        raise ValueError(f"no image of {dataset_root} has ground truth; nothing to evaluate")
    config = {
        "dataset": str(dataset_root),
        "layout": dataset.layout,
        "images": len(per_image),
        "images_in_dataset": samples_total,
        "limit": limit,
        "skipped": skipped,
        **_run_settings(predictor_spec, predictor, refiner, opts, two_stage, alignment, (guided_radius_px, guided_eps)),
        "seed": seed,
        "version": __version__,
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    results = {"methods": aggregate(per_image, methods), "per_image": per_image, "config": config}
    if writer is not None:
        writer.finish(results)
    return results


_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("delta1", "d1", "{:.3f}"),
    ("delta2", "d2", "{:.3f}"),
    ("delta3", "d3", "{:.3f}"),
    ("rel", "REL", "{:.4f}"),
    ("rmse", "RMSE", "{:.4f}"),
    ("ord", "ORD", "{:.4f}"),
    ("d3r", "D3R", "{:.4f}"),
    ("dbe_acc", "DBEacc", "{:.3f}"),
    ("dbe_comp", "DBEcomp", "{:.3f}"),
    ("bf1", "BF1", "{:.4f}"),
)


def format_table(results: dict[str, Any]) -> str:
    """A compact text table of the method means; a footnote gives per-metric image
    counts when a metric is undefined on some images."""
    n = results["config"]["images"]
    header = f"{'method':<16}" + "".join(f"{label:>9}" for _, label, _ in _COLUMNS)
    lines = [header, "-" * len(header)]
    counts: dict[str, int] = {}
    for name, entry in results["methods"].items():
        cells = []
        for key, _, fmt in _COLUMNS:
            value = entry.get(key)
            cells.append(f"{'-' if value is None else fmt.format(value):>9}")
            counts[key] = min(counts.get(key, n), entry["counts"][key])
        lines.append(f"{name:<16}" + "".join(cells))
    partial = [f"{label} {counts[key]}/{n}" for key, label, _ in _COLUMNS if counts.get(key, n) < n]
    if partial:
        lines.append("defined on: " + ", ".join(partial) + " images ('-' = on none)")
    return "\n".join(lines)
