"""Self-distillation pseudo-labels of whole images, and a resumable writer for datasets.

A pseudo-label is what the paper's coarse-to-fine procedure says about an image: G_0 is
the bilateral-filtered gradient of the one-stage result, steps 1..S re-predict and refine
(s+1)^2 windows, and G_S, the edge map of the final estimate, is the gradient target of
L_grad. The procedure is :func:`~sddr_pipeline.inference.two_stage.refine_two_stage` (the
project's one window implementation); this module only packages its result with the
high-frequency regions: the top ``top`` share of G_S grouped by k-means
(:func:`~sddr_pipeline.training.losses.edge_clusters`).

On disk (:func:`write_pseudo_labels`), per image ``NAME`` (a dataset sample name, may hold
``/``)::

    OUTPUT/gs/NAME.npy         G_S, float32 HxW (image size)
    OUTPUT/refined/NAME.npy    refined map, float32 HxW, normalised disparity-like [0, 1]
    OUTPUT/regions/NAME.npz    "regions": bool KxHxW, disjoint edge clusters
    OUTPUT/low/NAME.npy        raw LOW prediction at its working size
    OUTPUT/high/NAME.npy       raw HIGH prediction at its working size
    OUTPUT/manifest.json       settings + one entry per finished image

Every file is written atomically and an image enters the manifest only after its files,
so an interrupted run resumes where it stopped. The per-image files go through a
``writer`` function (default :func:`write_label_files`) so another storage (shards) can
replace it without touching the rest.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data import Dataset, open_dataset
from ..inference.options import RefineOptions
from ..inference.orchestrate import refine
from ..io import atomic_write, check_name
from ..io.resumable import check_input, check_settings, load_manifest, locked_output, save_manifest
from ..predictors.base import Predictor, SampleContext
from ..training.losses import edge_clusters

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ANOTHER_FOLDER = "use another output folder"


@dataclass(frozen=True)
class PseudoLabel:
    """One image's pseudo-label.

    ``gs``: G_S, float32 HxW at the image's size; ``refined``: the coarse-to-fine result in
    the refiner's normalised disparity-like space, float32 HxW; ``regions``: bool KxHxW,
    the k-means clusters of G_S's top pixels (disjoint; together exactly the pixels above
    G_S's ``1 - top`` quantile; trailing masks empty when there are fewer pixels than K);
    ``low``/``high``: the raw predictions at their working resolutions.
    """

    gs: np.ndarray
    refined: np.ndarray
    regions: np.ndarray
    low: np.ndarray
    high: np.ndarray


def cluster_masks(gs: np.ndarray, top: float, regions: int, seed: int) -> np.ndarray:
    """Bool KxHxW one-hot masks of :func:`edge_clusters` of an HxW G_S."""
    labels = edge_clusters(torch.from_numpy(np.ascontiguousarray(gs, dtype=np.float32)), top, regions, seed)[0, 0]
    return (labels[None] == torch.arange(regions)[:, None, None]).numpy()


def make_pseudo_label(
    image: np.ndarray,
    predictor: Predictor,
    refiner,
    options: RefineOptions | None = None,
    *,
    context: SampleContext | None = None,
    seed: int = 0,
    top: float = 0.05,
    regions: int = 8,
    **changes: Any,
) -> PseudoLabel:
    """The pseudo-label of an HxWx3 uint8 image: coarse-to-fine refinement as ``options``
    (with keyword ``changes``, e.g. ``steps=2``, ``low_res``) say, always two-stage with
    G_S; regions from k-means seeded by ``seed``. Deterministic for deterministic
    predictor and refiner."""
    options = RefineOptions.build(options, **{**changes, "mode": "two-stage", "edges": True})
    result = refine(image, predictor, refiner, options, context=context)
    gs = np.ascontiguousarray(result.edges, dtype=np.float32)
    return PseudoLabel(
        gs=gs,
        refined=np.ascontiguousarray(result.normalized, dtype=np.float32),
        regions=cluster_masks(gs, top, regions, seed),
        low=result.low,
        high=result.high,
    )


LabelWriter = Callable[[Path, str, PseudoLabel], dict[str, str]]


def _npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def write_label_files(root: Path, name: str, label: PseudoLabel) -> dict[str, str]:
    """Write one label as ``.npy``/``.npz`` files under ``root`` (see the module docstring);
    returns {field: path relative to ``root``}."""
    files = {
        "gs": f"gs/{name}.npy",
        "refined": f"refined/{name}.npy",
        "regions": f"regions/{name}.npz",
        "low": f"low/{name}.npy",
        "high": f"high/{name}.npy",
    }
    for key in ("gs", "refined", "low", "high"):
        _npy(root / files[key], getattr(label, key))
    atomic_write(root / files["regions"], lambda f: np.savez_compressed(f, regions=label.regions))
    return files


def read_label_files(root: str | os.PathLike, name: str) -> PseudoLabel:
    """Read back what :func:`write_label_files` wrote for ``name``."""
    root = Path(root)
    with np.load(root / "regions" / f"{name}.npz", allow_pickle=False) as npz:
        regions = npz["regions"]
    arrays = {k: np.load(root / k / f"{name}.npy", allow_pickle=False) for k in ("gs", "refined", "low", "high")}
    return PseudoLabel(regions=regions, **arrays)


@dataclass
class PseudoLabelRun:
    """What :func:`write_pseudo_labels` did: names labelled now, names already done."""

    manifest: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _load_manifest(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue: a new one, or the existing one if it was made from the
    same source with the same settings (else :class:`ResumeMismatch`, a ValueError)."""
    manifest = load_manifest(root / MANIFEST)
    if manifest is None:
        return {"format": FORMAT_VERSION, "settings": settings, "items": {}}
    recorded = manifest.get("settings", {})
    check_input(recorded.get("source"), settings["source"], root, advice=ANOTHER_FOLDER)
    check_settings(recorded, settings, root, ignore={"source"}, advice=ANOTHER_FOLDER)
    return manifest


def _done(root: Path, entry: dict[str, Any] | None) -> bool:
    return entry is not None and all((root / rel).is_file() for rel in entry["files"].values())


@locked_output(lambda args: Path(args["output_dir"]))  # one writer per output folder
def write_pseudo_labels(
    source: Dataset | str | os.PathLike,
    output_dir: str | os.PathLike,
    predictor: Predictor,
    refiner,
    options: RefineOptions | None = None,
    *,
    layout: str = "auto",
    seed: int = 0,
    top: float = 0.05,
    regions: int = 8,
    writer: LabelWriter = write_label_files,
    progress: Callable[[str], None] | None = None,
    **changes: Any,
) -> PseudoLabelRun:
    """Pseudo-label every image of ``source`` (a :class:`Dataset`, or a folder opened with
    ``open_dataset(source, layout)``) into ``output_dir``.

    Images already in the manifest with all their files are skipped; a manifest written
    from another source or with other settings (predictor, refiner weights, resolutions,
    steps, seed, top, regions) is refused (:mod:`sddr_pipeline.io.resumable`), and so is
    a second writer while the folder's lock is held. Each sample's context (its ground truth, if any) goes to the
    predictor, so ``simulated`` works on datasets with ground truth. ``options`` and
    ``changes`` are those of :func:`make_pseudo_label`.
    """
    dataset = source if isinstance(source, Dataset) else open_dataset(Path(source), layout)
    root = Path(output_dir)
    options = RefineOptions.build(options, **{**changes, "mode": "two-stage", "edges": True}).resolved(predictor, refiner)
    settings = {
        "source": str(Path(dataset.root).resolve()), "layout": dataset.layout,
        "predictor": getattr(predictor, "name", type(predictor).__name__),
        "refiner": getattr(refiner, "version", type(refiner).__name__),
        "low_res": options.low_res, "high_res": options.high_res, "steps": options.steps, "seed": seed, "top": top,
        "regions": regions,
    }
    manifest_path = root / MANIFEST
    manifest = _load_manifest(root, settings)
    run = PseudoLabelRun(manifest_path)
    say = progress or (lambda _line: None)
    for sample in dataset:
        check_name(sample.name, str(dataset.root), "sample name")
        if _done(root, manifest["items"].get(sample.name)):
            run.skipped.append(sample.name)
            continue
        t0 = time.perf_counter()
        label = make_pseudo_label(sample.image(), predictor, refiner, options, context=sample.context(), seed=seed,
                                  top=top, regions=regions)
        files = writer(root, sample.name, label)
        seconds = time.perf_counter() - t0
        manifest["items"][sample.name] = {"files": files, "shape": list(label.gs.shape), "seconds": round(seconds, 3)}
        save_manifest(manifest_path, manifest)
        run.written.append(sample.name)
        say(f"pseudo-label {sample.name}: {seconds:.2f}s")
    if not manifest_path.is_file():
        save_manifest(manifest_path, manifest)
    return run


__all__ = [
    "LabelWriter",
    "PseudoLabel",
    "PseudoLabelRun",
    "cluster_masks",
    "make_pseudo_label",
    "read_label_files",
    "write_label_files",
    "write_pseudo_labels",
]
