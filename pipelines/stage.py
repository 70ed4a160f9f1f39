"""Ray Data stages: fetch image bytes (tasks), then refine or pseudo-label them (actors).

:class:`RefineStage` and :class:`PseudoLabelStage` are callable classes for
``ds.map_batches(Stage, compute=ray.data.ActorPoolStrategy(size=n), fn_constructor_args=...)``:
each actor loads the predictor and the refiner ONCE. A batch may be what
``ray.data.read_images`` yields (a dict of numpy arrays: decoded ``image``, optional
``path``), or a pandas DataFrame / pyarrow Table whose ``image`` holds encoded bytes (the
pipeline's ``INPUT_SCHEMA`` rows). The stage returns the same batch format with every
column it does not consume kept as it was, plus the results (the :func:`result_schema`
columns; in numpy batches ``depth`` and the other maps are float32 arrays, not ``.npy``
bytes). One bad image, one failed prediction, never fails the batch or the actor: it
becomes a row with ``error_stage``/``error_reason`` set, which the driver writes to
``errors/``. Nothing here imports Ray, so the stages also run (and are tested) as plain
Python.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
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


def decode_image(data: bytes, name: str) -> np.ndarray:
    """HxWx3 uint8 from encoded image bytes, decoded in memory with exactly
    :func:`read_image`'s checks and conventions (EXIF, 16-bit, alpha, truncation, size
    limits); errors name ``name``."""
    try:
        return read_image(name, data=bytes(data))
    except ImageReadError as exc:
        raise ImageReadError(name, exc.reason) from None


def as_rgb(image: Any, name: str) -> np.ndarray:
    """An ``image`` cell as HxWx3 uint8: encoded bytes are decoded (:func:`decode_image`);
    a decoded array (``read_image``'s output) has grey replicated and alpha dropped."""
    if image is None:
        raise ImageReadError(name, "file is empty (0 bytes)")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(image, name)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] in (1, 4):
        array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3]
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ImageReadError(name, f"expected an HxWx3 uint8 image, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


#: Input columns a stage consumes (the image and what came with it); all others pass through.
CONSUMED_COLUMNS = frozenset({"image", "gt", "gt_kind", "read_error"})
#: Shard-only columns: numpy batches carry the maps themselves, not their ``.npy`` encoding.
_ENCODING_COLUMNS = frozenset({"depth_encoding", "depth_dtype", "depth_shape"})


def _cells(batch: Any, name: str, rows: int) -> list[Any]:
    """One column of a pyarrow, pandas or numpy-dict batch as a list (Nones when absent)."""
    if isinstance(batch, pa.Table):
        if name not in batch.column_names:
            return [None] * rows
        column = batch.column(name)
        if isinstance(column.type, pa.ExtensionType):  # Ray's tensor columns (read_images as pyarrow)
            return list(column.to_numpy(zero_copy_only=False))
        return column.to_pylist()
    if isinstance(batch, Mapping):
        return list(batch[name]) if name in batch else [None] * rows
    return batch[name].tolist() if name in batch.columns else [None] * rows


def _num_rows(batch: Any) -> int:
    if isinstance(batch, pa.Table):
        return batch.num_rows
    if isinstance(batch, Mapping):
        return len(next(iter(batch.values()))) if batch else 0
    return len(batch)


def _column_names(batch: Any) -> list[str]:
    if isinstance(batch, pa.Table):
        return list(batch.column_names)
    return list(batch.keys()) if isinstance(batch, Mapping) else [str(c) for c in batch.columns]


def _object_array(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # assigning a list of same-shape arrays would broadcast
        out[i] = value
    return out


def _numpy_column(values: Sequence[Any]) -> np.ndarray:
    """A numpy-batch column: maps stack into one float32 array when they share a shape
    (else an object array; a failed row's map is an empty 0x0 array, since Ray cannot
    store None among tensors); scalars become a plain array, or an object array with Nones."""
    if any(isinstance(v, np.ndarray) for v in values):
        maps = [np.zeros((0, 0), np.float32) if v is None else v for v in values]
        if len({m.shape for m in maps}) == 1:
            return np.stack(maps)
        return _object_array(maps)
    if any(v is None for v in values):
        return _object_array(values)
    return np.asarray(values)


@dataclass
class _Input:
    """One decoded input row: its position, names, pixels and what the predictor may use."""

    index: int
    id: str
    source: str | None
    image: np.ndarray
    data: Any
    context: Any
    seconds: float


class _ModelStage:
    """Loads the models once per actor; subclasses turn decoded images into row fields
    (:meth:`compute_batch`), this class adapts every batch format around that."""

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
        """Row fields of one image; array values are float32 maps (encoded for shards later)."""
        raise NotImplementedError

    def compute_batch(self, images: list[np.ndarray], contexts: list[Any]) -> list[dict[str, Any] | Exception]:
        """Row fields of each image, or the exception that image failed with."""
        out: list[dict[str, Any] | Exception] = []
        for image, context in zip(images, contexts):
            try:
                out.append(self.compute(image, context))
            except Exception as exc:  # one image's failure is its own row
                out.append(exc)
        return out

    def numpy_columns(self) -> list[str]:
        """The result columns of a numpy batch."""
        return [n for n in self.schema.names if n not in _ENCODING_COLUMNS and n != "image"]

    def __call__(self, batch: Any) -> Any:
        """Results of a pyarrow Table, pandas DataFrame or dict-of-numpy batch, in the same
        format, with the columns the stage does not consume passed through unchanged."""
        rows = self.process_batch(batch)
        passthrough = [n for n in _column_names(batch) if n not in CONSUMED_COLUMNS and n not in self.schema.names]
        if isinstance(batch, Mapping):
            out = {name: batch[name] for name in passthrough}
            if self.include_image and "image" in batch:
                out["image"] = batch["image"]
            out.update({name: _numpy_column([r.get(name) for r in rows]) for name in self.numpy_columns()})
            return out
        table = pa.Table.from_pylist([_shard_row(r) for r in rows], schema=self.schema)
        if isinstance(batch, pa.Table):
            for name in passthrough:
                table = table.append_column(batch.schema.field(name), batch.column(name))
            return table
        frame = table.to_pandas()
        for name in passthrough:
            frame[name] = batch[name].to_numpy()
        return frame

    def process(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One ``INPUT_SCHEMA`` row -> one shard result row (its error set when it failed)."""
        return _shard_row(self.process_batch({key: [value] for key, value in row.items()})[0])

    def process_batch(self, batch: Any) -> list[dict[str, Any]]:
        """One result row per input row (its error set when it failed), maps as arrays."""
        from sddr_pipeline.predictors import PredictorError, SampleContext

        n = _num_rows(batch)
        ids, sources, paths = _cells(batch, "id", n), _cells(batch, "source", n), _cells(batch, "path", n)
        images, gts, kinds, read_errors = (_cells(batch, c, n) for c in ("image", "gt", "gt_kind", "read_error"))
        rows: list[dict[str, Any]] = []
        inputs: list[_Input] = []
        for i in range(n):
            t0 = time.perf_counter()
            source = sources[i] if sources[i] is not None else paths[i]
            id_ = ids[i] if ids[i] is not None else source
            rows.append({"id": id_, "source": source, "predictor": self.predictor_version,
                         "refiner": self.refiner_version, "error_stage": None, "error_reason": None})
            if read_errors[i]:
                rows[i].update(error_stage="read", error_reason=read_errors[i])
                continue
            name = source or id_ or f"row {i}"
            try:
                image = as_rgb(images[i], name)
                context = SampleContext(name=id_ or name, gt=decode_array(gts[i]), gt_kind=kinds[i] or "depth")
            except Exception as exc:  # an undecodable image is its row's error
                rows[i].update(error_stage="decode", error_reason=_reason(exc))
                continue
            inputs.append(_Input(i, id_, source, image, images[i], context, time.perf_counter() - t0))
        t0 = time.perf_counter()
        results = self.compute_batch([x.image for x in inputs], [x.context for x in inputs]) if inputs else []
        share = (time.perf_counter() - t0) / max(len(inputs), 1)
        for x, result in zip(inputs, results):
            if isinstance(result, Exception):
                self._after_failure(result)
                stage = "predict" if isinstance(result, PredictorError) else "refine"
                rows[x.index].update(error_stage=stage, error_reason=_reason(result))
                continue
            rows[x.index].update(result, width=int(x.image.shape[1]), height=int(x.image.shape[0]),
                                 seconds=float(x.seconds + share))
            if self.include_image:
                rows[x.index]["image"] = x.data if isinstance(x.data, (bytes, bytearray)) else None
        return rows

    def _after_failure(self, exc: Exception) -> None:
        if self.device == "cuda" and "out of memory" in str(exc).lower():
            import torch

            torch.cuda.empty_cache()


def _shard_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A result row as shard cells: maps as ``.npy`` bytes, with the depth's encoding."""
    out = {k: encode_array(np.ascontiguousarray(v, dtype=np.float32)) if isinstance(v, np.ndarray) else v
           for k, v in row.items()}
    depth = row.get("depth")
    if isinstance(depth, np.ndarray):
        out.update(depth_encoding="npy", depth_dtype="float32", depth_shape=[int(s) for s in depth.shape])
    if isinstance(out.get("image"), (bytes, bytearray)):
        out["image"] = bytes(out["image"])
    return out


def _maps(**maps: Any) -> dict[str, Any]:
    """Map fields as float32 arrays (None stays None)."""
    return {k: None if v is None else np.ascontiguousarray(v, dtype=np.float32) for k, v in maps.items()}


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

    def numpy_columns(self) -> list[str]:
        drop = {"confidence"} if not self.options.confidence else set()
        drop |= {"low", "high"} if not self.save_predictions else set()
        return [n for n in super().numpy_columns() if n not in drop]

    def compute(self, image: np.ndarray, context) -> dict[str, Any]:
        from sddr_pipeline.inference import refine

        return self.fields(refine(image, self.predictor, self.refiner, self.options, context=context))

    def compute_batch(self, images: list[np.ndarray], contexts: list[Any]) -> list[dict[str, Any] | Exception]:
        """Same-size images through the models together (:func:`refine_batch`)."""
        from sddr_pipeline.inference.orchestrate import refine_batch

        results = refine_batch(images, self.predictor, self.refiner, self.options, contexts)
        return [r if isinstance(r, Exception) else self.fields(r) for r in results]

    def fields(self, result) -> dict[str, Any]:
        """Row fields of one :class:`~sddr_pipeline.inference.RefineResult`."""
        scale, shift = result.alignment
        fields = _maps(depth=result.depth, confidence=result.confidence)
        fields.update(scale=float(scale), shift=float(shift), scale_source=result.scale_source,
                      space=result.space, metric=bool(result.metric))
        if self.save_predictions:
            fields.update(_maps(low=result.low, high=result.high))
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

    def numpy_columns(self) -> list[str]:
        return [n for n in super().numpy_columns() if n != "confidence"]

    def compute(self, image: np.ndarray, context) -> dict[str, Any]:
        from sddr_pipeline.distillation import make_pseudo_label

        label = make_pseudo_label(image, self.predictor, self.refiner, context=context, steps=self.steps, seed=self.seed,
                                  top=self.top, regions=self.regions, **self.resolutions)
        regions, count = encode_regions(label.regions)
        fields = _maps(depth=label.refined, low=label.low, high=label.high, gs=label.gs)
        fields.update(scale=1.0, shift=0.0, scale_source="normalized", space="disparity", metric=False,
                      confidence=None, regions=regions, regions_count=count)
        return fields
