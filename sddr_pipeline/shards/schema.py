"""The Parquet shard format for refined depth and for training pseudo-labels.

One row per input image. Arrays are stored as the bytes of a ``.npy`` file (numpy's
format: dtype, shape and order in a small header, then the raw values), so every value
round-trips exactly (float32 stays float32; NaN and inf survive) and any reader that can
parse ``.npy`` headers decodes them; Arrow tensor extension types are avoided because
other readers see them as flat lists.

Columns of a ``depth`` shard (``KIND_DEPTH``):

==================  ==============  =====================================================
column              type            meaning
==================  ==============  =====================================================
id                  string          stable id: the input's relative path without extension,
                                    or the id given in a list file; unique in a run
source              string          where the image came from (URI or path)
width, height       int32           the image's size (EXIF orientation applied)
image               binary, null    the input file's bytes, when the run kept images
depth               binary          refined map: ``.npy`` bytes, float32 HxW, image size
depth_encoding      string          ``"npy"``
depth_dtype         string          ``"float32"`` (checked by :func:`decode_depth`)
depth_shape         list<int32>     ``[height, width]`` (checked by :func:`decode_depth`)
scale, shift        float64         least-squares alignment of the refined, normalised map
                                    to the predictor's units (``depth = scale * n + shift``
                                    in the disparity-like space before restoring ``space``)
scale_source        string          ``predictor``, ``metric-predictor``, ``reference`` or
                                    ``normalized`` (training shards)
space               string          ``depth`` or ``disparity``
metric              bool            metres (or 1/metres) when true, else relative units
confidence          binary, null    per-pixel confidence of ``depth`` (``.npy`` float32
                                    HxW in [0, 1], :mod:`sddr_pipeline.confidence`) when the
                                    run asked for it (``confidence``), else null;
                                    :func:`decode_confidence` reads it
low, high           binary, null    raw predictor outputs (``.npy`` float32) at their
                                    working resolutions, when the run saved them
predictor           string          predictor name/version that made the row
refiner             string          refiner version (``<preset>@<sha256[:12]>``)
seconds             float32         time spent on the row (decode, predict, refine, encode)
==================  ==============  =====================================================

A ``training`` shard (``KIND_TRAINING``, self-distillation pseudo-labels) has the same
columns, with ``depth`` the coarse-to-fine refined map in the refiner's normalised
disparity-like space (``space="disparity"``, ``metric=false``, ``scale=1``, ``shift=0``,
``scale_source="normalized"``), ``image``, ``low`` and ``high`` always present, plus:

==================  ==============  =====================================================
gs                  binary          G_S, the edge map of the refined map (``.npy`` float32 HxW)
regions             binary          high-frequency regions as a label map (``.npy`` uint8
                                    HxW: 0 = none, k+1 = region k); :func:`decode_regions`
                                    gives the bool KxHxW masks
regions_count       int32           K, the number of regions (trailing ones may be empty)
==================  ==============  =====================================================

A ``points`` shard (``KIND_POINTS``, ``sddr pipeline pointcloud``) holds one row per
POINT, not per image (``POINT_SCHEMA``); the points of one image are consecutive and the
images are in id order:

==================  ==============  =====================================================
image_id            string          the id of the image the point was unprojected from
x, y, z             float32         position: world frame when the image has a camera-to-
                                    world pose, else its camera frame (OpenCV axes: x
                                    right, y down, z forward); metres, or the SfM model's
                                    units when an image was scaled to its SfM points
r, g, b             uint8           colour of the image at the point
confidence          float32         confidence of the refined depth there, in [0, 1]
                                    (:mod:`sddr_pipeline.confidence`; the mean over the
                                    pixels of a voxel)
==================  ==============  =====================================================

Its file metadata adds ``sddr.images``: JSON ``{image id: {"points", "scale_source",
"scale", "shift", "world"}}`` for the images of the shard that gave points.

Failed rows live in separate error shards (``ERROR_SCHEMA``): ``id``, ``source``,
``stage`` (``read``: fetching the bytes, ``decode``: not a usable image, ``predict``: the
predictor failed, ``refine``: refinement or encoding failed; point clouds add
``metric``: the image could not be made metric, and ``unproject``: its camera is
missing or unusable), ``reason``.

File metadata (Parquet key/value metadata, readable with
``pyarrow.parquet.read_metadata(path).metadata``): ``sddr.format`` (``FORMAT``),
``sddr.kind``, ``sddr.shard`` (index), ``sddr.predictor`` and ``sddr.refiner`` (versions
of the models that made the rows), ``sddr.config`` (the run's settings, JSON) and
``sddr.package_version``. Columns may be added in later versions of the format; readers
should select the columns they use.
"""
from __future__ import annotations

import io
import json
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..io.names import shorten

FORMAT = "sddr-shards/1"
KIND_DEPTH = "depth"
KIND_TRAINING = "training"
KIND_POINTS = "points"
KINDS: tuple[str, ...] = (KIND_DEPTH, KIND_TRAINING, KIND_POINTS)
ERROR_STAGES: tuple[str, ...] = ("read", "decode", "predict", "refine", "metric", "unproject")
METADATA_PREFIX = "sddr."

_DEPTH_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("image", pa.binary()),
    pa.field("depth", pa.binary(), nullable=False),
    pa.field("depth_encoding", pa.string(), nullable=False),
    pa.field("depth_dtype", pa.string(), nullable=False),
    pa.field("depth_shape", pa.list_(pa.int32()), nullable=False),
    pa.field("scale", pa.float64(), nullable=False),
    pa.field("shift", pa.float64(), nullable=False),
    pa.field("scale_source", pa.string(), nullable=False),
    pa.field("space", pa.string(), nullable=False),
    pa.field("metric", pa.bool_(), nullable=False),
    pa.field("confidence", pa.binary()),
    pa.field("low", pa.binary()),
    pa.field("high", pa.binary()),
    pa.field("predictor", pa.string()),
    pa.field("refiner", pa.string()),
    pa.field("seconds", pa.float32()),
]
_TRAINING_FIELDS: list[pa.Field] = [
    pa.field("gs", pa.binary(), nullable=False),
    pa.field("regions", pa.binary(), nullable=False),
    pa.field("regions_count", pa.int32(), nullable=False),
]

DEPTH_SCHEMA = pa.schema(_DEPTH_FIELDS)
TRAINING_SCHEMA = pa.schema(_DEPTH_FIELDS + _TRAINING_FIELDS)
POINT_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("x", pa.float32(), nullable=False),
    pa.field("y", pa.float32(), nullable=False),
    pa.field("z", pa.float32(), nullable=False),
    pa.field("r", pa.uint8(), nullable=False),
    pa.field("g", pa.uint8(), nullable=False),
    pa.field("b", pa.uint8(), nullable=False),
    pa.field("confidence", pa.float32(), nullable=False),
])
#: What the point-cloud stage returns per IMAGE (the driver turns them into point rows):
#: the image's points (``.npy`` float32 Nx3), colours (uint8 Nx3), confidences (float32 N).
_POINT_IMAGE_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("image", pa.binary()),
    pa.field("points", pa.binary()),
    pa.field("colors", pa.binary()),
    pa.field("confidence", pa.binary()),
    pa.field("point_count", pa.int64()),
    pa.field("scale", pa.float64()),
    pa.field("shift", pa.float64()),
    pa.field("scale_source", pa.string()),
    pa.field("world", pa.bool_()),
    pa.field("predictor", pa.string()),
    pa.field("refiner", pa.string()),
    pa.field("seconds", pa.float32()),
]
#: Rows per Parquet row group: a few images, or 64 Ki points.
_ROW_GROUP_ROWS = {KIND_DEPTH: 64, KIND_TRAINING: 64, KIND_POINTS: 1 << 16}
ERROR_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
])
#: Extra columns a stage returns with every row so the driver can split failures off.
STATUS_FIELDS: list[pa.Field] = [pa.field("error_stage", pa.string()), pa.field("error_reason", pa.string())]
#: String columns worth dictionary-encoding in Parquet (binary columns are not).
DICTIONARY_COLUMNS: tuple[str, ...] = (
    "depth_encoding", "depth_dtype", "scale_source", "space", "predictor", "refiner", "stage", "image_id",
)


class ShardFormatError(ValueError):
    """A row or a file does not follow the shard format (wrong dtype, shape, metadata)."""


def schema_for(kind: str) -> pa.Schema:
    """The Arrow schema of a ``depth``, ``training`` or ``points`` shard."""
    if kind == KIND_DEPTH:
        return DEPTH_SCHEMA
    if kind == KIND_TRAINING:
        return TRAINING_SCHEMA
    if kind == KIND_POINTS:
        return POINT_SCHEMA
    raise ShardFormatError(f"unknown shard kind {kind!r}; use one of {', '.join(KINDS)}")


def result_schema(kind: str) -> pa.Schema:
    """What a pipeline stage returns, one row per image: the shard columns (for point
    shards the image's encoded points), nullable, plus the status columns (a failed row
    has only ``id``, ``source`` and the status set)."""
    fields = _POINT_IMAGE_FIELDS if kind == KIND_POINTS else schema_for(kind)
    return pa.schema([f.with_nullable(True) for f in fields] + STATUS_FIELDS)


def row_group_size(kind: str) -> int:
    """Rows per Parquet row group in a shard of ``kind``."""
    schema_for(kind)
    return _ROW_GROUP_ROWS[kind]


def point_rows(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """The ``POINT_SCHEMA`` table of successful per-image stage rows (``result_schema
    ("points")``), their points in the order of ``rows``."""
    names, owner, xyz, rgb, conf = [], [], [], [], []
    for k, row in enumerate(rows):
        pts = decode_array(row["points"])
        cols, c = decode_array(row["colors"]), decode_array(row["confidence"])
        n = 0 if pts is None else len(pts)
        if pts is None or pts.shape != (n, 3) or cols is None or cols.shape != (n, 3) or c is None or c.shape != (n,):
            raise ShardFormatError(f"row {shorten(row.get('id'))}: points, colors and confidence must be Nx3, Nx3 and N")
        names.append(row["id"])
        owner.append(np.full(n, k, dtype=np.int64))
        xyz.append(pts.astype(np.float32))
        rgb.append(cols.astype(np.uint8))
        conf.append(c.astype(np.float32))
    p = np.concatenate(xyz) if xyz else np.zeros((0, 3), np.float32)
    col = np.concatenate(rgb) if rgb else np.zeros((0, 3), np.uint8)
    image_ids = pa.array(names, pa.string()).take(pa.array(np.concatenate(owner) if owner else np.zeros(0, np.int64)))
    arrays = [image_ids,
              *(pa.array(p[:, k]) for k in range(3)), *(pa.array(col[:, k]) for k in range(3)),
              pa.array(np.concatenate(conf) if conf else np.zeros(0, np.float32))]
    return pa.Table.from_arrays(arrays, schema=POINT_SCHEMA)


def shard_table(kind: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """The shard file's table of the successful stage rows of one shard: one row per
    image (``depth``, ``training``), or one row per point (``points``, :func:`point_rows`)."""
    if kind == KIND_POINTS:
        return point_rows(rows)
    schema = schema_for(kind)
    return pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)


def encode_array(array: np.ndarray) -> bytes:
    """``.npy`` bytes of an array (exact: dtype, shape and every value kept; no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_array(data: bytes | None) -> np.ndarray | None:
    """Inverse of :func:`encode_array`; ``None`` (a null cell) stays ``None``."""
    if data is None:
        return None
    try:
        return np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ShardFormatError(f"not a .npy array ({exc})") from exc


def _get(row: Mapping[str, Any] | Any, key: str) -> Any:
    try:
        return row[key]
    except (KeyError, IndexError) as exc:
        raise ShardFormatError(f"row has no {key!r} column") from exc


def decode_depth(row: Mapping[str, Any] | Any) -> np.ndarray:
    """The refined map of one shard row (a dict from ``Table.to_pylist()``, a pandas row,
    or anything indexable by column name) as float32 HxW, checked against the row's
    ``depth_encoding``, ``depth_dtype`` and ``depth_shape``."""
    encoding = _get(row, "depth_encoding")
    if encoding != "npy":
        raise ShardFormatError(f"row {shorten(_get(row, 'id'))}: unsupported depth_encoding {encoding!r}")
    array = decode_array(_get(row, "depth"))
    if array is None:
        raise ShardFormatError(f"row {shorten(_get(row, 'id'))} has no depth")
    dtype, shape = str(_get(row, "depth_dtype")), tuple(int(v) for v in _get(row, "depth_shape"))
    if str(array.dtype) != dtype or array.shape != shape:
        raise ShardFormatError(
            f"row {shorten(_get(row, 'id'))}: depth is {array.dtype} {array.shape} but the row says {dtype} {shape}"
        )
    return array


def decode_confidence(row: Mapping[str, Any] | Any) -> np.ndarray | None:
    """The per-pixel confidence of one shard row as float32 HxW in [0, 1], checked against
    the row's ``depth_shape``; ``None`` when the row has none (a null cell, or a shard
    without the column)."""
    try:
        data = row["confidence"]
    except (KeyError, IndexError):
        return None
    if data is None or (isinstance(data, float) and np.isnan(data)):
        return None
    array = decode_array(data)
    shape = tuple(int(v) for v in _get(row, "depth_shape"))
    if array is None or array.dtype != np.float32 or array.shape != shape:
        raise ShardFormatError(
            f"row {shorten(_get(row, 'id'))}: confidence must be float32 {shape} like depth, got "
            f"{getattr(array, 'dtype', None)} {getattr(array, 'shape', None)}"
        )
    return array


def encode_regions(masks: np.ndarray) -> tuple[bytes, int]:
    """Disjoint bool KxHxW masks (K <= 255) -> (``.npy`` bytes of a uint8 label map, K)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ShardFormatError(f"regions must be KxHxW, got shape {masks.shape}")
    k = masks.shape[0]
    if k > 255:
        raise ShardFormatError(f"at most 255 regions fit a uint8 label map, got {k}")
    if k and int(masks.sum(axis=0).max()) > 1:
        raise ShardFormatError("regions overlap; only disjoint masks can be stored as a label map")
    labels = np.zeros(masks.shape[1:], np.uint8)
    for i in range(k):
        labels[masks[i]] = i + 1
    return encode_array(labels), k


def decode_regions(row: Mapping[str, Any] | Any) -> np.ndarray:
    """The bool KxHxW region masks of a training row."""
    labels = decode_array(_get(row, "regions"))
    if labels is None or labels.dtype != np.uint8 or labels.ndim != 2:
        raise ShardFormatError(f"row {shorten(_get(row, 'id'))}: regions must be a uint8 HxW label map")
    k = int(_get(row, "regions_count"))
    return labels[None] == np.arange(1, k + 1, dtype=np.uint8)[:, None, None]


def file_metadata(kind: str, *, shard: int, predictor: str, refiner: str, config: Mapping[str, Any],
                  package_version: str, images: Mapping[str, Any] | None = None) -> dict[bytes, bytes]:
    """The Parquet key/value metadata of one shard file (``images``: the per-image
    summary of a point shard, stored as JSON under ``sddr.images``)."""
    schema_for(kind)
    values = {
        "format": FORMAT,
        "kind": kind,
        "shard": str(shard),
        "predictor": predictor,
        "refiner": refiner,
        "config": json.dumps(dict(config), sort_keys=True),
        "package_version": package_version,
    }
    if images is not None:
        values["images"] = json.dumps(dict(images), sort_keys=True)
    return {f"{METADATA_PREFIX}{k}".encode(): v.encode() for k, v in values.items()}


def parse_file_metadata(metadata: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    """``sddr.*`` entries of Parquet key/value metadata, with ``config`` parsed from JSON."""
    out: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        k = key.decode()
        if k.startswith(METADATA_PREFIX):
            out[k[len(METADATA_PREFIX):]] = value.decode()
    if out.get("format") != FORMAT:
        raise ShardFormatError(f"not an sddr shard (format {out.get('format')!r}, expected {FORMAT!r})")
    out["config"] = json.loads(out.get("config", "{}"))
    if "images" in out:
        out["images"] = json.loads(out["images"])
    return out
