"""Parquet shards of refined depth, training pseudo-labels and point clouds, on any fsspec storage.

The format is documented in :mod:`.schema` (and ``docs/SHARDS.md``), the output folder
in :mod:`.layout`. Reading needs only pyarrow (or pandas)::

    from sddr_pipeline.shards import read_shards, decode_depth
    table = read_shards("s3://bucket/run1")          # completed shards of a job
    for row in table.to_pylist():
        depth = decode_depth(row)                      # float32 HxW
        conf = decode_confidence(row)                  # float32 HxW in [0, 1], or None
"""
from .io import StorageError, filesystem, publish_bytes, read_metadata, retry, write_table
from .layout import (
    ERRORS_DIR,
    MANIFEST,
    SHARDS_DIR,
    LayoutError,
    OutputLayout,
    ShardPlan,
    read_errors,
    read_shards,
    shard_name,
    shard_of,
)
from .schema import (
    DEPTH_SCHEMA,
    ERROR_SCHEMA,
    ERROR_STAGES,
    FORMAT,
    KIND_DEPTH,
    KIND_POINTS,
    KIND_TRAINING,
    POINT_SCHEMA,
    TRAINING_SCHEMA,
    ShardFormatError,
    decode_array,
    decode_confidence,
    decode_depth,
    decode_regions,
    encode_array,
    encode_regions,
    file_metadata,
    parse_file_metadata,
    point_rows,
    result_schema,
    schema_for,
    shard_table,
)

__all__ = [
    "DEPTH_SCHEMA",
    "ERRORS_DIR",
    "ERROR_SCHEMA",
    "ERROR_STAGES",
    "FORMAT",
    "KIND_DEPTH",
    "KIND_POINTS",
    "KIND_TRAINING",
    "LayoutError",
    "MANIFEST",
    "OutputLayout",
    "POINT_SCHEMA",
    "SHARDS_DIR",
    "ShardFormatError",
    "ShardPlan",
    "StorageError",
    "TRAINING_SCHEMA",
    "decode_array",
    "decode_confidence",
    "decode_depth",
    "decode_regions",
    "encode_array",
    "encode_regions",
    "file_metadata",
    "filesystem",
    "parse_file_metadata",
    "point_rows",
    "publish_bytes",
    "read_errors",
    "read_metadata",
    "read_shards",
    "result_schema",
    "retry",
    "schema_for",
    "shard_table",
    "shard_name",
    "shard_of",
    "write_table",
]
