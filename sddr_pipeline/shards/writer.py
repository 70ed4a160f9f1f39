"""Publishing one whole shard from a stage's result rows, where those rows are: in a worker.

:func:`publish_shard` is what a shard job's actor (:class:`~sddr_pipeline.pipelines.stage.ShardStage`)
calls once it has a result row for every id of a shard: it publishes the shard's error file
(or removes a stale one), then the shard file, each whole (:mod:`.io`), and returns a
:data:`SUMMARY_SCHEMA` row. Only that summary goes back to the driver, which records it in
the manifest (the commit); the maps never leave the worker. Shard files are named by index,
so a retried worker call replaces its own earlier attempt instead of adding a copy.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import pyarrow as pa

from .io import remove_file, write_table
from .layout import OutputLayout
from .schema import ERROR_SCHEMA, KIND_POINTS, ShardFormatError, file_metadata, row_group_size, shard_table

#: What a worker returns per shard: what the manifest records, and the models that made it.
#: ``bytes`` is null when nothing was written (the models differ from ``versions``).
SUMMARY_SCHEMA = pa.schema([
    pa.field("shard", pa.int64()),
    pa.field("rows", pa.int64()),
    pa.field("errors", pa.int64()),
    pa.field("first_id", pa.string()),
    pa.field("last_id", pa.string()),
    pa.field("bytes", pa.int64()),
    pa.field("write_seconds", pa.float64()),
    pa.field("points", pa.int64()),
    pa.field("predictor", pa.string()),
    pa.field("refiner", pa.string()),
])


def publish_shard(layout: OutputLayout, kind: str, index: int, rows: Sequence[Mapping[str, Any]], *,
                  config: Mapping[str, Any], versions: tuple[str, str] | None = None) -> dict[str, Any]:
    """Publish shard ``index`` of ``layout`` from its result rows (``result_schema(kind)``
    rows, one per id of the shard, failed ones with ``error_stage`` set): the error file
    (or, with no failure, the removal of one left by an earlier attempt), then the shard.
    ``config`` goes to the file metadata. When ``versions`` (predictor, refiner) is given and
    the rows were made by other models, nothing is written (``bytes`` null: the driver
    refuses the shard). Returns the shard's :data:`SUMMARY_SCHEMA` row."""
    from sddr_pipeline import __version__

    t0 = time.perf_counter()
    rows = sorted(rows, key=lambda r: r["id"])
    pairs = {(r["predictor"], r["refiner"]) for r in rows}
    if len(pairs) != 1:
        raise ShardFormatError(f"shard {index}: rows were made by different models {sorted(pairs)}")
    predictor, refiner = next(iter(pairs))
    ok = [r for r in rows if r["error_stage"] is None]
    bad = [r for r in rows if r["error_stage"] is not None]
    summary: dict[str, Any] = {"shard": index, "rows": len(ok), "errors": len(bad), "first_id": rows[0]["id"],
                               "last_id": rows[-1]["id"], "bytes": None, "write_seconds": None, "points": None,
                               "predictor": predictor, "refiner": refiner}
    if versions is not None and tuple(versions) != (predictor, refiner):
        return summary
    table = shard_table(kind, ok)
    images = None
    if kind == KIND_POINTS:  # rows count images; a point shard's file holds one row per point
        images = {r["id"]: {"points": r["point_count"], "scale_source": r["scale_source"], "scale": r["scale"],
                            "shift": r["shift"], "world": r["world"]} for r in ok}
        summary["points"] = table.num_rows
    meta = file_metadata(kind, shard=index, predictor=predictor, refiner=refiner, config=config,
                         package_version=__version__, images=images)
    fs = layout.fs
    retries = {"attempts": layout.attempts, "max_wait_s": layout.max_wait_s}
    errors_path = layout.errors_path(index)
    if bad:
        errors = [{"id": r["id"], "source": r["source"], "stage": r["error_stage"], "reason": r["error_reason"]} for r in bad]
        write_table(fs, errors_path, pa.Table.from_pylist(errors, schema=ERROR_SCHEMA), metadata=meta, **retries)
    else:
        remove_file(fs, errors_path, **retries)
    summary["bytes"] = write_table(fs, layout.shard_path(index), table, metadata=meta, row_group_size=row_group_size(kind),
                                   **retries)
    summary["write_seconds"] = round(time.perf_counter() - t0, 4)
    return summary
