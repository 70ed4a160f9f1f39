"""Refine a folder of images (or a dataset folder) into an output folder, resumably.

OUTPUT layout::

    depth/<name>.npy      float32, input resolution, units/polarity in manifest.json
    depth/<name>.png      16-bit linear code (value = png * scale + offset, per image)
    preview/<name>.png    input image beside its colourised refined depth
    low/<name>.npy, high/<name>.npy   raw predictions (with save_predictions)
    confidence/<name>.npy float32 HxW in [0, 1], per-pixel confidence (with confidence)
    manifest.json         inputs, outputs, versions, mode, units, timings, errors

Every file is written under a temporary name and renamed, so nothing is ever half
written; a resumed run (``skip_existing``) skips images the manifest lists as done
from the same content (each entry's ``fingerprint``; a changed image is redone) and,
with ``confidence``, whose confidence file exists. Resuming an OUTPUT made from another
INPUT is refused, and one OUTPUT has one writer at a time (``.sddr.lock``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import __version__
from .data import ImageReadError, open_dataset
from .inference.options import RefineOptions
from .inference.orchestrate import refine
from .io import remove_temporaries, save_npy, save_png16, save_preview
from .io.depth_files import PNG16_ENCODING
from .io.lock import is_lock_file
from .io.names import UnsafeNameError, check_name
from .io.resumable import (check_input, check_settings, input_fingerprint, load_manifest, locked_output, same_input,
                           save_manifest)
from .io.timestamps import utc_now
from .predictors.base import Predictor, PredictorError

OnError = Literal["fail", "skip"]
MANIFEST = "manifest.json"
NEW_FOLDER = "use a new output folder"
CONFIDENCE_OUTPUT = (
    "confidence/<name>.npy: float32 HxW in [0, 1] at the input's resolution, per-pixel confidence of the refined "
    "map (sddr_pipeline.confidence, e0 = {e0:g}; usable as a depth-loss weight); written for images whose "
    "outputs list it"
)


class RefineJobError(RuntimeError):
    """The job cannot start (bad input/output folder) or stopped on a failed image."""


@dataclass
class JobReport:
    output: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def _safe_name(sample) -> str:
    """The sample's name, checked (:func:`~sddr_pipeline.io.names.check_name`) before it
    becomes output file names."""
    try:
        return check_name(sample.name, str(sample.image_path), "output name")
    except UnsafeNameError as exc:
        raise RefineJobError(str(exc)) from None


def _job_identity(predictor_spec: str, predictor: Predictor, refiner, options: RefineOptions,
                  scale_points: int | None = None) -> dict:
    identity = {
        "predictor": {
            "spec": predictor_spec,
            "name": getattr(predictor, "name", type(predictor).__name__),
            "space": predictor.kind.space,
            "metric": predictor.kind.metric,
        },
        "refiner": {"version": getattr(refiner, "version", "unknown")},
        **options.identity(),
    }
    if scale_points:
        identity["scale_points"] = scale_points
    return identity


def _prepare_output(output: Path, identity: dict, skip_existing: bool, source: str) -> dict:
    """Create OUTPUT, or reopen it for resuming; returns the manifest to continue.

    ``source`` is the resolved INPUT: an OUTPUT made from another INPUT is refused, since
    images of the same name there are other images."""
    if output.exists() and not output.is_dir():
        raise RefineJobError(f"output {output} exists and is not a folder")
    existing = output.exists() and any(not is_lock_file(p) for p in output.iterdir())
    if existing and not skip_existing:
        raise RefineJobError(f"output folder {output} already exists and is not empty; pass --skip-existing to resume it, or choose a new folder")
    if existing:
        manifest = load_manifest(output / MANIFEST, error=RefineJobError)
        if manifest is None:
            raise RefineJobError(f"cannot resume {output}: it has no {MANIFEST} (not an `sddr refine` output)")
        # identity keys sit beside the manifest's other keys; scale_points is absent when unused
        recorded = {k: manifest.get(k) for k in (*identity, "scale_points")}
        check_settings(recorded, identity, output, advice=NEW_FOLDER, error=RefineJobError)
        check_input(manifest.get("input"), source, output, advice=NEW_FOLDER, error=RefineJobError)
        remove_temporaries(output)
        manifest["errors"] = []
        return manifest
    output.mkdir(parents=True, exist_ok=True)
    return {
        "sddr_pipeline": __version__,
        "created": utc_now(),
        **identity,
        "outputs": {
            "depth_npy": "depth/<name>.npy: float32 HxW at the input's resolution, in each image's `space` (depth or disparity) and units (`metric`: metres or 1/metres; else the predictor's relative units)",
            "depth_png": f"depth/<name>.png: 16-bit PNG, {PNG16_ENCODING} (scale/offset per image below and in the PNG's 'sddr' text chunk)",
            "preview": "preview/<name>.png: input beside the colourised refined map (warm = near)",
        },
        "images": {},
        "errors": [],
    }


@locked_output(lambda args: Path(args["output_path"]), RefineJobError)  # one writer per OUTPUT
def refine_folder(
    input_path: str | Path,
    output_path: str | Path,
    predictor: Predictor,
    refiner,
    options: RefineOptions | None = None,
    *,
    predictor_spec: str = "",
    layout: str = "auto",
    on_error: OnError = "fail",
    skip_existing: bool = False,
    save_predictions: bool = False,
    scale_points: int | None = None,
    progress: bool = True,
    **changes: Any,
) -> JobReport:
    """Refine every image of ``input_path`` into ``output_path`` (layout in the module doc).

    With ``on_error="fail"`` the first bad image stops the job with a
    :class:`RefineJobError` naming the file and the reason; with ``"skip"`` it is recorded
    in the manifest and the rest are processed (check ``report.failed``). ``options``
    (with keyword ``changes`` applied, as :func:`sddr_pipeline.inference.refine` takes
    them) say how each image is refined; ``options.edges`` is ignored (no edge maps are
    written). ``options.confidence`` also writes ``confidence/<name>.npy``
    (:func:`sddr_pipeline.confidence.confidence`); resuming with it re-refines done images
    that have no confidence file yet. ``scale_points=N`` makes every map METRIC from N
    random valid pixels of the sample's own metric depth (an RGB-D or LiDAR frame with
    holes; a stand-in for SfM points), as :class:`~sddr_pipeline.inference.ScaleReference`;
    an image without metric depth is an error naming it.
    """
    if scale_points is not None and scale_points < 3:
        raise ValueError(f"scale_points must be at least 3, got {scale_points}")
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    src, out = Path(input_path), Path(output_path)
    dataset = _open_input(src, layout, scale_points)
    try:
        opts = RefineOptions.build(options, **{**changes, "edges": False}).resolved(predictor, refiner)
    except ValueError as exc:
        raise RefineJobError(str(exc)) from None
    manifest = _open_output(out, src, dataset, _job_identity(predictor_spec, predictor, refiner, opts, scale_points),
                            skip_existing, opts.confidence)
    images: dict = manifest["images"]
    report = JobReport(out)
    t_start = time.perf_counter()
    last_save = 0.0
    bar = _progress(len(dataset), progress)
    try:
        for sample in dataset:
            name = _safe_name(sample)
            fingerprint = input_fingerprint(sample.image_path, sample.gt, sample.intrinsics)
            if skip_existing and _is_done(out, images.get(name), opts.confidence, fingerprint):
                report.skipped.append(name)
            else:
                try:
                    images[name] = _refine_sample(out, sample, name, predictor, refiner, opts, scale_points,
                                                  save_predictions)
                    images[name]["fingerprint"] = fingerprint
                    report.done.append(name)
                except _SampleFailed as failed:
                    _record_failure(manifest, report, sample, name, failed)
                    if on_error == "fail":
                        raise RefineJobError(f"{sample.image_path}: {failed.stage} failed: {failed.reason} "
                                             "(use --on-error skip to continue past bad images)") from failed.__cause__
            bar.update(1)
            if time.perf_counter() - last_save > 2.0:
                _save_manifest(out, manifest, report, t_start)
                last_save = time.perf_counter()
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t_start
        _save_manifest(out, manifest, report, t_start)
    return report


def _open_input(src: Path, layout: str, scale_points: int | None):
    """The dataset at ``src``, refused with a :class:`RefineJobError` naming it when it is
    missing, unreadable, empty or (with ``scale_points``) lacks metric depth."""
    if not src.exists():
        raise RefineJobError(f"input {src} does not exist")
    try:
        dataset = open_dataset(src, layout=layout)
    except (ValueError, FileNotFoundError) as exc:
        raise RefineJobError(f"cannot read input {src}: {exc}") from exc
    if len(dataset) == 0:
        raise RefineJobError(f"input {src} holds no images")
    if scale_points:
        _check_scale_points_input(src, dataset)
    return dataset


def _open_output(out: Path, src: Path, dataset, identity: dict, skip_existing: bool, confidence: bool) -> dict:
    """The manifest to continue: a new OUTPUT's, or a resumed one's (see :func:`_prepare_output`)."""
    source = str(src.resolve())
    manifest = _prepare_output(out, identity, skip_existing, source)
    manifest["input"] = source
    manifest["layout"] = dataset.layout
    if confidence:
        from .confidence import DEFAULT_E0

        manifest["outputs"]["confidence"] = CONFIDENCE_OUTPUT.format(e0=DEFAULT_E0)
    return manifest


class _SampleFailed(Exception):
    """One image failed at ``stage`` (read, refine or write); the cause is chained."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        self.stage = stage
        self.reason = f"{type(exc).__name__}: {exc}"
        super().__init__(f"{stage}: {self.reason}")


def _refine_sample(out: Path, sample, name: str, predictor: Predictor, refiner, options: RefineOptions,
                   scale_points: int | None, save_predictions: bool) -> dict:
    """Read, refine and write one image; returns its manifest entry. A bad image, a failed
    prediction or a failed write is a :class:`_SampleFailed` naming the stage."""
    t0 = time.perf_counter()
    stage = "read"
    try:
        image = sample.image()
        reference = _scale_reference(sample, scale_points) if scale_points else None
        stage = "refine"
        result = refine(image, predictor, refiner, options, context=sample.context(), scale_reference=reference)
        stage = "write"
        return _write_outputs(out, name, sample, image, result, save_predictions, t0)
    except (ImageReadError, PredictorError, ValueError, RuntimeError, OSError) as exc:
        raise _SampleFailed(stage, exc) from exc


def _record_failure(manifest: dict, report: JobReport, sample, name: str, failed: _SampleFailed) -> None:
    entry = {"input": str(sample.image_path), "stage": failed.stage, "reason": failed.reason}
    manifest["images"][name] = {"status": "failed", **entry}
    manifest["errors"].append({"name": name, **entry})
    report.failed[name] = failed.reason


def _check_scale_points_input(src: Path, dataset) -> None:
    """``--scale-points`` takes each image's own metric depth: refuse, once and before
    OUTPUT is touched, an input where no image has any (e.g. a plain image folder)."""
    missing = dataset.names_without_depth()
    if len(missing) == len(dataset):
        raise RefineJobError(
            f"--scale-points needs each image's metric depth, but none of the {len(dataset)} image(s) of {src} "
            f"(layout {dataset.layout}) has a depth map: give the images their RGB-D / LiDAR depth (a dataset "
            "folder with depth ground truth, e.g. the generic layout's rgb/ + gt/, NYU, KITTI, rgbd_sequence), "
            "or drop --scale-points to write relative maps"
        )


def _scale_reference(sample, n: int):
    """``n`` seeded random valid pixels of the sample's metric depth as a scale reference."""
    from .geometry.tsdf import scale_points_reference

    return scale_points_reference(sample.name, sample.gt, sample.gt_kind, n)


def _is_done(out: Path, entry: dict | None, confidence: bool, fingerprint: dict[str, Any] | None) -> bool:
    """Whether a manifest entry is a complete result of the input as it is now: same
    input fingerprint, depth written, and the confidence file when ``confidence`` is
    requested."""
    if not entry or entry.get("status") != "done" or not same_input(entry.get("fingerprint"), fingerprint):
        return False
    outputs = entry.get("outputs", {})
    needed = ["depth_npy"] + (["confidence"] if confidence else [])
    return all(key in outputs and (out / outputs[key]).is_file() for key in needed)


def _write_outputs(out: Path, name: str, sample, image: np.ndarray, result, save_predictions: bool, t0: float) -> dict:
    rel = {
        "depth_npy": f"depth/{name}.npy",
        "depth_png": f"depth/{name}.png",
        "preview": f"preview/{name}.png",
    }
    save_npy(out / rel["depth_npy"], result.depth)
    png = save_png16(out / rel["depth_png"], result.depth)
    save_preview(out / rel["preview"], image, result.normalized)
    if save_predictions:
        rel["low"] = f"low/{name}.npy"
        rel["high"] = f"high/{name}.npy"
        save_npy(out / rel["low"], result.low)
        save_npy(out / rel["high"], result.high)
    timings = dict(result.timings)
    if result.confidence is not None:
        from .confidence import save_confidence

        rel["confidence"] = f"confidence/{name}.npy"
        save_confidence(out / rel["confidence"], result.confidence)
    seconds = time.perf_counter() - t0
    return {
        "status": "done",
        "input": str(sample.image_path),
        "size": [int(image.shape[0]), int(image.shape[1])],
        "space": result.space,
        "metric": result.metric,
        "scale_source": result.scale_source,
        "alignment": {"scale": result.alignment[0], "shift": result.alignment[1]},
        "png16": {"scale": png["scale"], "offset": png["offset"]},
        "prediction_shapes": {"low": list(result.low.shape), "high": list(result.high.shape)},
        "outputs": rel,
        "timings_s": {k: round(v, 4) for k, v in {**timings, "total": seconds}.items()},
    }


def _save_manifest(out: Path, manifest: dict, report: JobReport, t_start: float) -> None:
    images = manifest["images"]
    manifest["updated"] = utc_now()
    manifest["counts"] = {
        "done": sum(1 for e in images.values() if e.get("status") == "done"),
        "failed": sum(1 for e in images.values() if e.get("status") == "failed"),
        "this_run": {"done": len(report.done), "skipped": len(report.skipped), "failed": len(report.failed)},
    }
    manifest["last_run_seconds"] = round(time.perf_counter() - t_start, 3)
    save_manifest(out / MANIFEST, manifest)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="sddr refine", file=sys.stderr, dynamic_ncols=True)
