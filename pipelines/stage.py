"""Ray Data stages: fetch image bytes (tasks), then refine or pseudo-label them (actors).

:class:`RefineStage` and :class:`PseudoLabelStage` are callable classes for
``ds.map_batches(Stage, compute=ray.data.ActorPoolStrategy(size=n), batch_format="pyarrow",
fn_constructor_kwargs=...)``: each actor loads the predictor and the refiner ONCE, then
turns batches of ``INPUT_SCHEMA`` rows into rows of :func:`result_schema` (the shard
columns plus ``error_stage``/``error_reason``). One bad image, one failed prediction,
never fails the batch or the actor: it becomes a row with its error set, which the
driver writes to ``errors/``. Nothing here imports Ray, so the stages also run (and are
tested) as plain Python.
"""
from __future__ import annotations

import functools
import os
import tempfile
import time
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from sddr_pipeline.data import ImageReadError, read_image
from sddr_pipeline.devices import resolve_device
from sddr_pipeline.shards.io import DEFAULT_MAX_WAIT_S, filesystem, read_bytes
from sddr_pipeline.shards.layout import shard_of
from sddr_pipeline.shards.schema import (
    KIND_DEPTH,
    KIND_TRAINING,
    decode_array,
    encode_array,
    encode_regions,
    result_schema,
)

#: What the read step hands the model stage: the image's bytes, or why they are missing.
INPUT_SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("image", pa.binary()),
    pa.field("gt", pa.binary()),
    pa.field("gt_kind", pa.string()),
    pa.field("read_error", pa.string()),
])


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=4)
def _open_dataset(root: str, layout: str):
    from sddr_pipeline.data import open_dataset

    dataset = open_dataset(root, layout=layout)
    return dataset, {name: i for i, name in enumerate(dataset.names)}


def read_inputs(batch: pa.Table, *, storage_options: Mapping[str, Any] | None = None, attempts: int | None = None,
                max_wait_s: float = DEFAULT_MAX_WAIT_S, dataset_root: str | None = None,
                dataset_layout: str | None = None) -> pa.Table:
    """Fetch each row's image bytes (``id``, ``source`` in; ``INPUT_SCHEMA`` out).

    Transient storage errors are retried (``attempts``, ``max_wait_s``); what still fails
    sets ``read_error``. For
    dataset inputs the sample's ground truth comes along (``gt`` as ``.npy`` bytes)."""
    rows = []
    for id_, source in zip(batch.column("id").to_pylist(), batch.column("source").to_pylist()):
        row: dict[str, Any] = {"id": id_, "source": source, "image": None, "gt": None, "gt_kind": None, "read_error": None}
        try:
            if dataset_root is not None:
                dataset, index = _open_dataset(dataset_root, dataset_layout or "auto")
                sample = dataset[index[id_]]
                row["source"] = str(sample.image_path)
                fs, path = filesystem(str(sample.image_path))
                if sample.gt is not None:
                    row["gt"], row["gt_kind"] = encode_array(sample.gt), sample.gt_kind
            else:
                fs, path = filesystem(source, storage_options)
            row["image"] = read_bytes(fs, path, attempts=attempts, max_wait_s=max_wait_s)
        except Exception as exc:  # any failure to fetch one input is that input's error row
            row["read_error"] = _reason(exc)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)


def select_parquet_rows(batch: pa.Table, *, first_ids: Sequence[str], pending: frozenset[int]) -> pa.Table:
    """Rows of image shards (``id``, ``image`` bytes or struct{bytes}, optional ``source``,
    ``path`` from ``include_paths``) that belong to pending output shards, as ``INPUT_SCHEMA``."""
    ids = batch.column("id").to_pylist()
    images = batch.column("image")
    if pa.types.is_struct(images.type):
        images = pa.chunked_array([chunk.field("bytes") for chunk in images.chunks], type=pa.binary())
    images = images.to_pylist()
    if "source" in batch.column_names:
        sources = batch.column("source").to_pylist()
    elif "path" in batch.column_names:
        sources = batch.column("path").to_pylist()
    else:
        sources = [None] * len(ids)
    rows = []
    for id_, image, source in zip(ids, images, sources):
        if shard_of(first_ids, id_) not in pending:
            continue
        missing = None if image else "the input row has no image bytes"
        rows.append({"id": id_, "source": source, "image": image, "gt": None, "gt_kind": None, "read_error": missing})
    return pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)


def decode_image(data: bytes, name: str, tmpdir: str | None = None) -> np.ndarray:
    """HxWx3 uint8 from encoded image bytes, with exactly :func:`read_image`'s checks and
    conventions (EXIF, 16-bit, alpha, truncation, size limits); errors name ``name``."""
    fd, path = tempfile.mkstemp(prefix="sddr-img-", dir=tmpdir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return read_image(path)
    except ImageReadError as exc:
        raise ImageReadError(name, exc.reason) from None
    finally:
        os.unlink(path)


class _ModelStage:
    """Loads the models once per actor; subclasses turn one decoded image into row fields."""

    kind: str = KIND_DEPTH

    def __init__(self, predictor: str, weights: str, *, device: str = "auto", torch_threads: int | None = None,
                 include_image: bool = False, low_res: int | None = None, high_res: int | None = None) -> None:
        import torch

        from sddr_pipeline.models import Refiner
        from sddr_pipeline.predictors import get_predictor

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = resolve_device(device)
        self.predictor = get_predictor(predictor, self.device)
        self.refiner = Refiner.from_pretrained(weights, device=self.device)
        self.predictor_version = str(getattr(self.predictor, "name", predictor))
        self.refiner_version = str(self.refiner.version)
        self.include_image = include_image
        self.resolutions = {"low_res": low_res, "high_res": high_res}
        self.schema = result_schema(self.kind)

    def compute(self, image: np.ndarray, context) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.process(row) for row in batch.to_pylist()], schema=self.schema)

    def process(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One ``INPUT_SCHEMA`` row -> one result row (its error set when it failed)."""
        from sddr_pipeline.predictors import PredictorError, SampleContext

        t0 = time.perf_counter()
        out: dict[str, Any] = {"id": row["id"], "source": row["source"], "predictor": self.predictor_version,
                               "refiner": self.refiner_version, "error_stage": None, "error_reason": None}
        if row.get("read_error"):
            return {**out, "error_stage": "read", "error_reason": row["read_error"]}
        stage = "decode"
        try:
            data = row.get("image")
            if not data:
                raise ImageReadError(row["source"] or row["id"], "file is empty (0 bytes)")
            image = decode_image(data, row["source"] or row["id"])
            gt = decode_array(row.get("gt"))
            context = SampleContext(name=row["id"], gt=gt, gt_kind=row.get("gt_kind") or "depth")
            stage = "refine"
            fields = self.compute(image, context)
            out.update(fields)
            out.update(width=int(image.shape[1]), height=int(image.shape[0]),
                       image=bytes(data) if self.include_image else None,
                       seconds=float(time.perf_counter() - t0))
        except PredictorError as exc:
            return {**out, "error_stage": "predict", "error_reason": _reason(exc)}
        except Exception as exc:  # one image's failure must not end the actor
            self._after_failure(exc)
            return {**out, "error_stage": stage, "error_reason": _reason(exc)}
        return out

    def _after_failure(self, exc: Exception) -> None:
        if self.device == "cuda" and "out of memory" in str(exc).lower():
            import torch

            torch.cuda.empty_cache()


def _depth_fields(depth: np.ndarray, confidence: np.ndarray | None = None) -> dict[str, Any]:
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    conf = None if confidence is None else encode_array(np.ascontiguousarray(confidence, dtype=np.float32))
    return {"depth": encode_array(depth), "depth_encoding": "npy", "depth_dtype": "float32",
            "depth_shape": [int(s) for s in depth.shape], "confidence": conf}


class RefineStage(_ModelStage):
    """Refines each image (``mode`` one-stage or two-stage with ``steps``, local-range
    clamp ``range_clamp``, None = the library default) into a ``depth`` shard row;
    ``save_predictions`` keeps the raw low/high predictions and ``confidence`` fills the
    ``confidence`` column (:mod:`sddr_pipeline.confidence`)."""

    kind = KIND_DEPTH

    def __init__(self, predictor: str, weights: str, *, mode: str = "one-stage", steps: int = 2,
                 save_predictions: bool = False, confidence: bool = False, range_clamp: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(predictor, weights, **kwargs)
        from sddr_pipeline.inference.options import RefineOptions, TwoStageConfig

        self.options = RefineOptions(mode=mode, two_stage=TwoStageConfig(steps=steps), range_clamp=range_clamp,
                                     confidence=confidence, edges=False, **self.resolutions)
        self.save_predictions = save_predictions

    def compute(self, image: np.ndarray, context) -> dict[str, Any]:
        from sddr_pipeline.inference import refine

        result = refine(image, self.predictor, self.refiner, self.options, context=context)
        scale, shift = result.alignment
        fields = _depth_fields(result.depth, result.confidence)
        fields.update(scale=float(scale), shift=float(shift), scale_source=result.scale_source,
                      space=result.space, metric=bool(result.metric))
        if self.save_predictions:
            fields.update(low=encode_array(np.asarray(result.low, np.float32)),
                          high=encode_array(np.asarray(result.high, np.float32)))
        return fields


class PseudoLabelStage(_ModelStage):
    """Self-distillation labels of each image (``make_pseudo_label``: low/high
    predictions, coarse-to-fine refined map, G_S, high-frequency regions) as a
    ``training`` shard row."""

    kind = KIND_TRAINING

    def __init__(self, predictor: str, weights: str, *, steps: int = 2, seed: int = 0, top: float = 0.05,
                 regions: int = 8, **kwargs: Any) -> None:
        kwargs.setdefault("include_image", True)
        super().__init__(predictor, weights, **kwargs)
        self.steps, self.seed, self.top, self.regions = steps, seed, top, regions

    def compute(self, image: np.ndarray, context) -> dict[str, Any]:
        from sddr_pipeline.distillation import make_pseudo_label

        label = make_pseudo_label(image, self.predictor, self.refiner, context=context, steps=self.steps, seed=self.seed,
                                  top=self.top, regions=self.regions, **self.resolutions)
        regions, count = encode_regions(label.regions)
        fields = _depth_fields(label.refined)
        fields.update(scale=1.0, shift=0.0, scale_source="normalized", space="disparity", metric=False,
                      low=encode_array(np.asarray(label.low, np.float32)),
                      high=encode_array(np.asarray(label.high, np.float32)),
                      gs=encode_array(np.asarray(label.gs, np.float32)), regions=regions, regions_count=count)
        return fields
