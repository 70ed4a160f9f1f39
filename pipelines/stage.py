"""Ray Data stages: fetch image bytes (tasks), then refine, pseudo-label or unproject them (actors).

:class:`RefineStage`, :class:`PseudoLabelStage` and :class:`PointCloudStage` are callable classes for
``ds.map_batches(Stage, compute=ray.data.ActorPoolStrategy(size=n), fn_constructor_args=...)``:
each actor loads the predictor and the refiner ONCE. A batch may be what
``ray.data.read_images`` yields (a dict of numpy arrays: decoded ``image``, optional
``path``), or a pandas DataFrame / pyarrow Table whose ``image`` holds encoded bytes (the
pipeline's ``INPUT_SCHEMA`` rows). The stage returns the same batch format with every
column it does not consume kept as it was, plus the results (the :func:`result_schema`
columns; in numpy batches ``depth`` and the other maps are float32 arrays, not ``.npy``
bytes). One bad image, one failed prediction, never fails the batch or the actor: it
becomes a row with ``error_stage``/``error_reason`` set, which goes to ``errors/``.

The project's own shard jobs move whole shards: :func:`read_shard` (tasks) fetches every
input of a shard into one row, and :class:`ShardStage` (actors) runs one of the stages
above over it, writes the shard's files itself and returns a small summary. Nothing here
imports Ray, so the stages also run (and are tested) as plain Python.
"""
from __future__ import annotations

import functools
import io
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sddr_pipeline.data import ImageReadError, read_image
from sddr_pipeline.devices import resolve_device
from sddr_pipeline.shards.io import DEFAULT_MAX_WAIT_S, filesystem, read_bytes, retry
from sddr_pipeline.shards.schema import (
    KIND_DEPTH,
    KIND_POINTS,
    KIND_TRAINING,
    decode_array,
    encode_array,
    encode_regions,
    result_schema,
)

from .inputs import CAMERA_COLUMNS, CAMERA_FIELDS, PARQUET_CAMERA_COLUMNS, InputError, camera_columns

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


#: ``INPUT_SCHEMA`` plus the per-image camera columns, for the point-cloud job.
CAMERA_INPUT_SCHEMA = pa.schema(list(INPUT_SCHEMA) + list(CAMERA_FIELDS))


def decode_depth_bytes(data: bytes, name: str, unit: float | None = None) -> np.ndarray:
    """Metric depth (float32 HxW, 0 = invalid) from a depth file's bytes: ``.npy`` (any
    numeric 2-D array) or a single-channel 16-bit PNG; metres = value * ``unit`` (None:
    1 for ``.npy``, 1e-3, i.e. millimetres, for PNG)."""
    from sddr_pipeline.data import read_depth_png16

    raw = bytes(data)
    if raw.startswith(b"\x93NUMPY"):
        values = np.load(io.BytesIO(raw), allow_pickle=False).astype(np.float64)
        scale = 1.0 if unit is None else unit
    else:
        values = read_depth_png16(name, data=raw).astype(np.float64)
        scale = 1e-3 if unit is None else unit
    if values.ndim != 2:
        raise ValueError(f"{name}: a depth map must be 2-D, got shape {values.shape}")
    depth = values * float(scale)
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)


def _dataset_camera(sample) -> dict[str, Any]:
    """Camera columns of a dataset sample: its K (for its own image size) and pose."""
    from sddr_pipeline.geometry.intrinsics import Intrinsics

    if sample.intrinsics is None:
        return {c: None for c in CAMERA_COLUMNS}
    pose = sample.meta.get("pose")
    return camera_columns(Intrinsics.from_matrix(sample.intrinsics), None if pose is None else np.asarray(pose, np.float64))


def read_inputs(batch: pa.Table, *, storage_options: Mapping[str, Any] | None = None, attempts: int | None = None,
                max_wait_s: float = DEFAULT_MAX_WAIT_S, dataset_root: str | None = None,
                dataset_layout: str | None = None, cameras: bool = False) -> pa.Table:
    """Fetch each row's image bytes (``id``, ``source`` in; ``INPUT_SCHEMA`` out).

    Transient storage errors are retried (``attempts``, ``max_wait_s``); what still fails
    sets ``read_error``. For
    dataset inputs the sample's ground truth comes along (``gt`` as ``.npy`` bytes).
    With ``cameras`` the camera columns (:data:`~.inputs.CAMERA_COLUMNS`) of the batch
    pass through (a dataset sample's come from its intrinsics and pose), and a row's
    ``depth_uri`` is fetched into ``gt`` (``CAMERA_INPUT_SCHEMA`` out)."""
    given = {c: batch.column(c).to_pylist() for c in CAMERA_COLUMNS if cameras and c in batch.column_names}
    rows = []
    for k, (id_, source) in enumerate(zip(batch.column("id").to_pylist(), batch.column("source").to_pylist())):
        row: dict[str, Any] = {"id": id_, "source": source, "image": None, "gt": None, "gt_kind": None, "read_error": None}
        if cameras:
            row.update({c: given[c][k] if c in given else None for c in CAMERA_COLUMNS})
        try:
            if dataset_root is not None:
                dataset, index = _open_dataset(dataset_root, dataset_layout or "auto")
                sample = dataset[index[id_]]
                row["source"] = str(sample.image_path)
                fs, path = filesystem(str(sample.image_path))
                if sample.gt is not None:
                    row["gt"], row["gt_kind"] = encode_array(sample.gt), sample.gt_kind
                if cameras:
                    row.update(_dataset_camera(sample))
            else:
                fs, path = filesystem(source, storage_options)
            row["image"] = read_bytes(fs, path, attempts=attempts, max_wait_s=max_wait_s)
            if row.get("depth_uri"):
                dfs, dpath = filesystem(row["depth_uri"], storage_options)
                data = read_bytes(dfs, dpath, attempts=attempts, max_wait_s=max_wait_s)
                row["gt"] = encode_array(decode_depth_bytes(data, row["depth_uri"], row["depth_unit"]))
                row["gt_kind"] = "depth"
        except Exception as exc:  # any failure to fetch one input is that input's error row
            row["read_error"] = _reason(exc)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=CAMERA_INPUT_SCHEMA if cameras else INPUT_SCHEMA)


def parquet_input_rows(batch: pa.Table, *, cameras: bool = False) -> pa.Table:
    """Rows of image shards (``id``, ``image`` bytes or struct{bytes}, optional ``source``,
    ``path`` of the file they came from) as ``INPUT_SCHEMA``.
    With ``cameras`` the camera columns come along and an encoded ``depth`` map (with
    ``depth_unit``, :func:`decode_depth_bytes`) becomes ``gt`` (``CAMERA_INPUT_SCHEMA``)."""
    ids = batch.column("id").to_pylist()
    images = batch.column("image")
    if pa.types.is_struct(images.type):
        images = pa.chunked_array([chunk.field("bytes") for chunk in images.chunks], type=images.type.field("bytes").type)
    images = images.to_pylist()
    if "source" in batch.column_names:
        sources = batch.column("source").to_pylist()
    elif "path" in batch.column_names:
        sources = batch.column("path").to_pylist()
    else:
        sources = [None] * len(ids)
    extra = [c for c in (*CAMERA_COLUMNS, "depth") if cameras and c in batch.column_names]
    given = {c: _cells(batch, c, len(ids)) for c in extra}
    rows = []
    for k, (id_, image, source) in enumerate(zip(ids, images, sources)):
        missing = None if image else "the input row has no image bytes"
        row = {"id": id_, "source": source, "image": image, "gt": None, "gt_kind": None, "read_error": missing}
        if cameras:
            row.update({c: given[c][k] if c in given else None for c in CAMERA_COLUMNS})
            if isinstance(row["camera_to_world"], np.ndarray):
                row["camera_to_world"] = row["camera_to_world"].reshape(-1).tolist()
            depth = given["depth"][k] if "depth" in given else None
            if depth is not None and not missing:
                try:
                    row["gt"] = encode_array(decode_depth_bytes(depth, f"{id_} (depth column)", row["depth_unit"]))
                    row["gt_kind"] = "depth"
                except Exception as exc:  # an unreadable depth cell is that row's read error
                    row["read_error"] = _reason(exc)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=CAMERA_INPUT_SCHEMA if cameras else INPUT_SCHEMA)


def _parquet_rows(file: str, positions: Sequence[int], columns: Sequence[str],
                  storage_options: Mapping[str, Any] | None) -> pa.Table:
    """Rows ``positions`` of one Parquet file (only the row groups holding them are read), in that order."""
    fs, path = filesystem(file, storage_options)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        present = [c for c in columns if c in pf.schema_arrow.names]
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        wanted = np.asarray(positions, dtype=np.int64)
        if len(wanted) and (wanted.min() < 0 or wanted.max() >= starts[-1]):
            raise IndexError(f"{file} has {int(starts[-1])} rows, fewer than the listing found")
        group_of = np.searchsorted(starts, wanted, side="right") - 1
        groups = sorted(set(group_of.tolist()))
        table = pf.read_row_groups(groups, columns=present)
    offset = {g: int(sum(starts[h + 1] - starts[h] for h in groups[:k])) for k, g in enumerate(groups)}
    take = [offset[g] + int(p - starts[g]) for g, p in zip(group_of.tolist(), wanted.tolist())]
    return table.take(pa.array(take, pa.int64()))


def read_parquet_rows(batch: pa.Table, *, storage_options: Mapping[str, Any] | None = None, attempts: int | None = None,
                      max_wait_s: float = DEFAULT_MAX_WAIT_S, cameras: bool = False) -> pa.Table:
    """Fetch rows of Parquet image files by position (``id``, ``source``: the file, ``row``:
    the row's number in it, as :func:`~.inputs.list_inputs` found them; ``INPUT_SCHEMA`` out,
    with ``cameras`` the camera columns too: ``CAMERA_INPUT_SCHEMA``; :func:`parquet_input_rows`).

    Only the row groups holding the rows are read, so an input written in id order is read
    once over a job. Transient storage errors are retried; a file that still cannot be read,
    or whose row no longer holds the listed id (the input changed), sets ``read_error`` of its rows."""
    ids, files, positions = (batch.column(c).to_pylist() for c in ("id", "source", "row"))
    columns = ["id", "image", "source", *(PARQUET_CAMERA_COLUMNS if cameras else ())]
    by_file: dict[str, list[int]] = {}
    for k, file in enumerate(files):
        by_file.setdefault(file, []).append(k)
    parts, order = [], []
    for file, ks in by_file.items():
        try:
            table = retry(lambda: _parquet_rows(file, [positions[k] for k in ks], columns, storage_options),
                          what=f"reading {file}", attempts=attempts, max_wait_s=max_wait_s)
            for k, found in zip(ks, table.column("id").to_pylist()):
                if found != ids[k]:
                    raise InputError(f"row {positions[k]} of {file} holds id {found!r}, not {ids[k]!r}: the input "
                                     "changed since the job listed it")
            part = parquet_input_rows(table.append_column("path", pa.array([file] * len(ks), pa.string())),
                                      cameras=cameras)
        except Exception as exc:  # this file's rows are read errors
            rows = [{"id": ids[k], "source": file, "read_error": _reason(exc)} for k in ks]
            part = pa.Table.from_pylist(rows, schema=CAMERA_INPUT_SCHEMA if cameras else INPUT_SCHEMA)
        parts.append(part)
        order.extend(ks)
    table = pa.concat_tables(parts) if parts else (CAMERA_INPUT_SCHEMA if cameras else INPUT_SCHEMA).empty_table()
    return table.take(pa.array(np.argsort(np.asarray(order, dtype=np.int64), kind="stable")))


def _large(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(pa.large_binary()) if pa.types.is_binary(f.type) else f for f in schema])


def pack_rows(tables: Sequence[pa.Table]) -> pa.ListArray:
    """One list cell per table, holding its rows as structs (binary columns as
    ``large_binary``: a whole shard's bytes may pass 2 GiB). The inverse is :func:`unpack_rows`."""
    schema = _large(tables[0].schema)
    tables = [t.cast(schema) for t in tables]
    values = pa.concat_arrays([pa.StructArray.from_arrays([t.column(c).combine_chunks() for c in schema.names],
                                                          fields=list(schema)) for t in tables])
    offsets = np.cumsum([0] + [t.num_rows for t in tables]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def unpack_rows(cell: pa.ListScalar) -> pa.Table:
    """The rows one :func:`pack_rows` cell holds, as a table."""
    return pa.Table.from_struct_array(cell.values)


def read_shard(batch: pa.Table, *, parquet: bool = False, **kwargs: Any) -> pa.Table:
    """The read step of a shard job: each row (``shard``, ``inputs``: a :func:`pack_rows`
    cell of the shard's ``id``, ``source`` and, as the input has them, ``row`` and camera
    columns) becomes (``shard``, ``inputs``: what :func:`read_inputs`, or for Parquet
    inputs :func:`read_parquet_rows`, returns for them, packed). ``kwargs`` go to that
    function. One row holds one whole shard, so Ray can never split a shard between blocks."""
    read = read_parquet_rows if parquet else read_inputs
    shards = batch.column("shard").to_pylist()
    tables = [read(unpack_rows(cell), **kwargs) for cell in batch.column("inputs")]
    return pa.table({"shard": pa.array(shards, pa.int64()), "inputs": pack_rows(tables)})


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
    (:meth:`compute_batch`), this class adapts every batch format around that.
    ``extra_columns`` are input columns a subclass consumes besides the image: each row's
    values reach it in ``context.extra``."""

    kind: str = KIND_DEPTH
    extra_columns: tuple[str, ...] = ()

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
        consumed = CONSUMED_COLUMNS | set(self.extra_columns)
        passthrough = [n for n in _column_names(batch) if n not in consumed and n not in self.schema.names]
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
        from sddr_pipeline.predictors import SampleContext

        n = _num_rows(batch)
        ids, sources, paths = _cells(batch, "id", n), _cells(batch, "source", n), _cells(batch, "path", n)
        images, gts, kinds, read_errors = (_cells(batch, c, n) for c in ("image", "gt", "gt_kind", "read_error"))
        extras = {c: _cells(batch, c, n) for c in self.extra_columns}
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
                context = SampleContext(name=id_ or name, gt=decode_array(gts[i]), gt_kind=kinds[i] or "depth",
                                        extra={c: extras[c][i] for c in self.extra_columns})
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
                rows[x.index].update(error_stage=self.error_stage(result), error_reason=_reason(result))
                continue
            rows[x.index].update(result, width=int(x.image.shape[1]), height=int(x.image.shape[0]),
                                 seconds=float(x.seconds + share))
            if self.include_image:
                rows[x.index]["image"] = x.data if isinstance(x.data, (bytes, bytearray)) else None
        return rows

    def error_stage(self, exc: Exception) -> str:
        """The ``error_stage`` of an image that failed with ``exc``."""
        from sddr_pipeline.predictors import PredictorError

        return "predict" if isinstance(exc, PredictorError) else "refine"

    def _after_failure(self, exc: Exception) -> None:
        if self.device == "cuda" and "out of memory" in str(exc).lower():
            import torch

            torch.cuda.empty_cache()


def _npy_cell(array: np.ndarray) -> bytes:
    """``.npy`` bytes of a result array: floating arrays as float32, others as they are."""
    return encode_array(np.ascontiguousarray(array, dtype=np.float32 if array.dtype.kind == "f" else array.dtype))


def _shard_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A result row as shard cells: maps as ``.npy`` bytes, with the depth's encoding."""
    out = {k: _npy_cell(v) if isinstance(v, np.ndarray) else v for k, v in row.items()}
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
    """Refines each image (``mode`` one-stage or two-stage with ``steps`` and the windows'
    texture median ``window_median``, local-range clamp ``range_clamp``; None = the library
    default) into a ``depth`` shard row;
    ``save_predictions`` keeps the raw low/high predictions and ``confidence`` fills the
    ``confidence`` column (:mod:`sddr_pipeline.confidence`)."""

    kind = KIND_DEPTH

    def __init__(self, predictor: str, weights: str, *, mode: str = "one-stage", steps: int = 2,
                 save_predictions: bool = False, confidence: bool = False, range_clamp: float | None = None,
                 window_median: int | None = None, **kwargs: Any) -> None:
        super().__init__(predictor, weights, **kwargs)
        from sddr_pipeline.inference.options import RefineOptions, two_stage_config

        self.options = RefineOptions(mode=mode, two_stage=two_stage_config(steps, window_median), range_clamp=range_clamp,
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


@dataclass
class _View:
    """How one image becomes points: intrinsics for its size, its camera-to-world pose (or
    None: camera frame), the sparse metric depths that scale it (or None: a metric
    predictor's own scale) and what they are (``scale-points``, ``sfm``)."""

    intrinsics: Any
    pose: np.ndarray | None
    reference: Any
    source: str | None


def _pose(values: Any, name: str) -> np.ndarray:
    from sddr_pipeline.geometry.intrinsics import IntrinsicsError

    try:
        pose = np.asarray(values, dtype=np.float64).reshape(4, 4)
    except (TypeError, ValueError) as exc:
        raise IntrinsicsError(f"{name}: camera_to_world must be 16 numbers (a row-major 4x4), got {values!r:.80}") from exc
    if not np.all(np.isfinite(pose)) or not np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0]):
        raise IntrinsicsError(f"{name}: camera_to_world must be a finite 4x4 with last row 0 0 0 1")
    return pose


class PointCloudStage(_ModelStage):
    """Each image as world-frame (or camera-frame) coloured points of METRIC depth, one
    ``points`` result row per image (:func:`~sddr_pipeline.shards.schema.result_schema`).

    The camera columns (:data:`~.inputs.CAMERA_COLUMNS`) give intrinsics and an optional
    camera-to-world pose. The refined map is made metric, in this order, from
    ``scale_points`` random pixels of the image's own depth map (``gt``, e.g. RGB-D or
    LiDAR), else from its ``sparse_depth`` (the SfM points it sees; at least
    ``min_sfm_points``), else from a metric predictor; otherwise, or when the fit leaves a
    median relative error above ``max_scale_error`` at those points, the image is an
    error row of stage ``metric``. Missing or unusable cameras are stage ``unproject``.
    Pixels of confidence below ``min_confidence`` (None: all), beyond ``depth_max`` or
    off the ``stride`` grid are dropped; ``voxel`` (world units; None: off) keeps one
    point per cube (:func:`~sddr_pipeline.geometry.pointcloud.voxel_downsample`).
    """

    kind = KIND_POINTS
    extra_columns = CAMERA_COLUMNS

    def __init__(self, predictor: str, weights: str, *, mode: str = "one-stage", steps: int = 2,
                 range_clamp: float | None = None, scale_points: int | None = None, min_sfm_points: int = 10,
                 max_scale_error: float | None = 0.2, min_confidence: float | None = 0.3, voxel: float | None = 0.01,
                 depth_max: float | None = None, stride: int = 1, window_median: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(predictor, weights, **kwargs)
        from sddr_pipeline.inference.options import RefineOptions, two_stage_config

        self.options = RefineOptions(mode=mode, two_stage=two_stage_config(steps, window_median), range_clamp=range_clamp,
                                     confidence=True, edges=False, **self.resolutions)
        self.scale_points, self.min_sfm_points, self.max_scale_error = scale_points, min_sfm_points, max_scale_error
        self.min_confidence, self.voxel, self.depth_max, self.stride = min_confidence, voxel, depth_max, stride

    def error_stage(self, exc: Exception) -> str:
        from sddr_pipeline.geometry.intrinsics import IntrinsicsError
        from sddr_pipeline.geometry.pointcloud import RelativeDepthError

        if isinstance(exc, RelativeDepthError):
            return "metric"
        if isinstance(exc, IntrinsicsError):
            return "unproject"
        return super().error_stage(exc)

    def view(self, image: np.ndarray, context) -> _View:
        """The camera and the scale reference of one image (errors: see the class doc)."""
        from sddr_pipeline.geometry.intrinsics import Intrinsics, IntrinsicsError
        from sddr_pipeline.geometry.pointcloud import RelativeDepthError
        from sddr_pipeline.geometry.tsdf import scale_points_reference
        from sddr_pipeline.inference import ScaleReference

        name, cam = context.name, context.extra
        h, w = image.shape[:2]
        if any(cam.get(k) is None for k in ("fx", "fy", "cx", "cy")):
            raise IntrinsicsError(f"{name}: no intrinsics (fx, fy, cx, cy): cannot unproject")
        size = (cam.get("camera_width"), cam.get("camera_height"))
        size = size if None not in size else (None, None)
        intr = Intrinsics(float(cam["fx"]), float(cam["fy"]), float(cam["cx"]), float(cam["cy"]), *size).for_size(h, w)
        pose = None if cam.get("camera_to_world") is None else _pose(cam["camera_to_world"], name)
        if self.scale_points:
            try:
                ref = scale_points_reference(name, context.gt, context.gt_kind, self.scale_points)
            except ValueError as exc:
                raise RelativeDepthError(f"{exc}: it cannot be made metric") from None
            if context.gt.shape != (h, w):
                raise RelativeDepthError(f"{name}: its depth map is {context.gt.shape[1]}x{context.gt.shape[0]} but the "
                                         f"image is {w}x{h}: --scale-points needs depth at the image's pixels")
            return _View(intr, pose, ref, "scale-points")
        if cam.get("sparse_depth") is not None:
            sparse = np.asarray(decode_array(cam["sparse_depth"]), dtype=np.float64).reshape(-1, 3)
            rows, cols, z = sparse[:, 0], sparse[:, 1], sparse[:, 2]
            if None not in size and size != (w, h):  # observations are in the camera's pixels
                rows, cols = (rows + 0.5) * h / size[1] - 0.5, (cols + 0.5) * w / size[0] - 0.5
            ok = np.isfinite(z) & (z > 0) & (rows >= 0) & (rows <= h - 1) & (cols >= 0) & (cols <= w - 1)
            if ok.sum() < max(self.min_sfm_points, 3):
                raise RelativeDepthError(f"{name} has {int(ok.sum())} usable SfM points, fewer than min_sfm_points="
                                         f"{self.min_sfm_points}: it cannot be made metric")
            return _View(intr, pose, ScaleReference(np.stack([rows[ok], cols[ok]], axis=1), z[ok]), "sfm")
        if not self.predictor.kind.metric:
            raise RelativeDepthError(
                f"{name} cannot be made metric: the predictor {self.predictor_version} is relative, the image has no "
                "SfM points and scale_points (--scale-points N, sparse depth of each image) was not asked for")
        return _View(intr, pose, None, None)

    def compute_batch(self, images: list[np.ndarray], contexts: list[Any]) -> list[dict[str, Any] | Exception]:
        """Views first (an image that cannot be made metric is never predicted), then the
        rest through :func:`refine_batch` with their scale references, then unprojection."""
        from sddr_pipeline.inference.orchestrate import refine_batch

        out: list[Any] = []
        for image, context in zip(images, contexts):
            try:
                out.append(self.view(image, context))
            except Exception as exc:  # this image's error row
                out.append(exc)
        todo = [k for k, v in enumerate(out) if isinstance(v, _View)]
        results = refine_batch([images[k] for k in todo], self.predictor, self.refiner, self.options,
                               [contexts[k] for k in todo], [out[k].reference for k in todo]) if todo else []
        for k, result in zip(todo, results):
            try:
                out[k] = result if isinstance(result, Exception) else self.unproject(images[k], out[k], result, contexts[k].name)
            except Exception as exc:  # this image's error row
                out[k] = exc
        return out

    def compute(self, image: np.ndarray, context) -> dict[str, Any]:
        result = self.compute_batch([image], [context])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def unproject(self, image: np.ndarray, view: _View, result, name: str) -> dict[str, Any]:
        """Row fields of one refined image: its filtered, voxelised points."""
        from sddr_pipeline.geometry.pointcloud import RelativeDepthError, depth_to_pointcloud, metric_depth, voxel_downsample

        depth = metric_depth(result.depth, result.space, result.metric, name)
        if view.reference is not None and self.max_scale_error is not None:
            h, w = depth.shape
            pts = np.asarray(view.reference.points, dtype=np.float64)
            rows, cols = np.clip(np.rint(pts[:, 0]).astype(int), 0, h - 1), np.clip(np.rint(pts[:, 1]).astype(int), 0, w - 1)
            z = np.asarray(view.reference.depth, dtype=np.float64)
            d = depth[rows, cols].astype(np.float64)
            ok = np.isfinite(z) & (z > 0)
            rel = np.where(d[ok] > 0, np.abs(d[ok] - z[ok]) / z[ok], np.inf)
            median = float(np.median(rel)) if rel.size else float("inf")
            if not median <= self.max_scale_error:
                raise RelativeDepthError(f"{name}: after scaling to its {view.source} points the median relative error "
                                         f"there is {median:.3f}, more than max_scale_error={self.max_scale_error:g}")
        cloud = depth_to_pointcloud(depth, view.intrinsics, image, stride=self.stride, depth_max=self.depth_max,
                                    camera_to_world=view.pose, confidence=result.confidence,
                                    min_confidence=self.min_confidence)
        if self.voxel:
            cloud = voxel_downsample(cloud, self.voxel)
        scale, shift = result.alignment
        return {"points": cloud.points, "colors": cloud.colors, "confidence": cloud.confidence,
                "point_count": len(cloud), "scale": float(scale), "shift": float(shift),
                "scale_source": view.source or result.scale_source, "world": view.pose is not None}


class ShardStage:
    """The actor of a shard job: whole shards in (rows of :func:`read_shard`), each shard's
    files written by this worker (:func:`~sddr_pipeline.shards.writer.publish_shard`), one
    :data:`~sddr_pipeline.shards.writer.SUMMARY_SCHEMA` row per shard out, so the driver
    receives summaries only, never maps.

    ``stage`` (:class:`RefineStage`, :class:`PseudoLabelStage`, :class:`PointCloudStage`) is
    built once with ``predictor``, ``weights`` and ``stage_kwargs`` and called on
    ``batch_size`` rows at a time; after each call the shard's rows done so far go to
    ``progress`` (a Ray actor with ``report(shard, ok, failed)``; None: not reported).
    ``layout`` is the output, ``config`` the settings recorded in each file's metadata,
    ``versions`` the (predictor, refiner) of the shards already recorded (None: none yet):
    a shard made by other models is not written."""

    def __init__(self, stage: type, predictor: str, weights: str, *, layout: Any, config: Mapping[str, Any],
                 batch_size: int, versions: Sequence[str] | None = None, progress: Any = None,
                 stage_kwargs: Mapping[str, Any] | None = None) -> None:
        self.model = stage(predictor, weights, **dict(stage_kwargs or {}))
        self.layout, self.config, self.batch_size, self.progress = layout, dict(config), batch_size, progress
        self.versions = None if versions is None else tuple(versions)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from sddr_pipeline.shards.writer import SUMMARY_SCHEMA

        summaries = [self.shard(index, unpack_rows(cell))
                     for index, cell in zip(batch.column("shard").to_pylist(), batch.column("inputs"))]
        return pa.Table.from_pylist(summaries, schema=SUMMARY_SCHEMA)

    def shard(self, index: int, inputs: pa.Table) -> dict[str, Any]:
        """Result rows for every input of shard ``index``, published; its summary."""
        from sddr_pipeline.shards.writer import publish_shard

        rows: list[dict[str, Any]] = []
        failed = 0
        for start in range(0, inputs.num_rows, self.batch_size):
            part = self.model(inputs.slice(start, self.batch_size)).to_pylist()
            rows.extend(part)
            failed += sum(r["error_stage"] is not None for r in part)
            if self.progress is not None:
                self.progress.report.remote(index, len(rows) - failed, failed)
        return publish_shard(self.layout, self.model.kind, index, rows, config=self.config, versions=self.versions)
