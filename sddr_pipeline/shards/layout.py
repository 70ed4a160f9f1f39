"""The output folder of a shard job, and reading it back (no Ray needed).

::

    OUTPUT/shards/part-NNNNN.parquet   final shards only (rows of shard NNNNN, sorted by id)
    OUTPUT/errors/part-NNNNN.parquet   failed rows of shard NNNNN (id, source, stage, reason)
    OUTPUT/manifest.json               config, versions, plan, completed shards, counts, timings

Shard NNNNN holds the inputs at positions ``[N * rows_per_shard, (N + 1) * rows_per_shard)``
of the SORTED input ids, so a shard's content is fixed before any work starts and a
rerun re-creates exactly the shards the manifest does not list as completed. A shard is
published only whole (see :mod:`.io`), its error file before it, and the manifest after
both, so every id appears exactly once across ``shards/`` and ``errors/``.
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pyarrow as pa

from ..io.resumable import load_manifest, save_manifest
from ..io.timestamps import utc_now as now  # noqa: F401 - the manifests' timestamp, imported from here by pipelines.runner
from .io import DEFAULT_MAX_WAIT_S, filesystem, join, parquet_files, read_parquet, remove_temporaries, unstrip
from .schema import ERROR_SCHEMA, FORMAT, schema_for

MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
ERRORS_DIR = "errors"


class LayoutError(ValueError):
    """The output cannot be used: not a shard job's output, or made with other settings."""


def shard_name(index: int) -> str:
    if index < 0:
        raise ValueError(f"shard index must be non-negative, got {index}")
    return f"part-{index:05d}.parquet"


def ids_digest(sorted_ids: Sequence[str]) -> str:
    """sha256 of the sorted ids, one per line: identifies the input of a resumable job."""
    digest = hashlib.sha256()
    for i in sorted_ids:
        digest.update(i.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardPlan:
    """Deterministic assignment of sorted ids to shards of ``rows_per_shard`` rows."""

    ids: tuple[str, ...]
    rows_per_shard: int

    def __post_init__(self) -> None:
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be at least 1, got {self.rows_per_shard}")
        if list(self.ids) != sorted(self.ids):
            raise ValueError("shard plan ids must be sorted")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("shard plan ids must be unique")

    @property
    def count(self) -> int:
        return -(-len(self.ids) // self.rows_per_shard)

    def shard_ids(self, index: int) -> tuple[str, ...]:
        return self.ids[index * self.rows_per_shard:(index + 1) * self.rows_per_shard]

    @property
    def first_ids(self) -> list[str]:
        """The first id of every shard (what :func:`shard_of` bisects)."""
        return [self.ids[i] for i in range(0, len(self.ids), self.rows_per_shard)]

    def describe(self) -> dict[str, Any]:
        return {"rows_per_shard": self.rows_per_shard, "shards": self.count, "ids": len(self.ids),
                "ids_sha256": ids_digest(self.ids)}


def shard_of(first_ids: Sequence[str], id_: str) -> int:
    """Index of the shard an id of the plan belongs to, from the plan's ``first_ids``."""
    return bisect.bisect_right(first_ids, id_) - 1


class OutputLayout:
    """Paths and manifest of one output root (any fsspec URI)."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None, *, attempts: int | None = None,
                 max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        self.uri = str(uri)
        self.fs, self.root = filesystem(self.uri, storage_options)
        self.attempts = attempts
        self.max_wait_s = max_wait_s

    @property
    def shards_dir(self) -> str:
        return join(self.root, SHARDS_DIR)

    @property
    def errors_dir(self) -> str:
        return join(self.root, ERRORS_DIR)

    @property
    def manifest_path(self) -> str:
        return join(self.root, MANIFEST)

    def shard_path(self, index: int) -> str:
        return join(self.shards_dir, shard_name(index))

    def errors_path(self, index: int) -> str:
        return join(self.errors_dir, shard_name(index))

    def display(self, path: str) -> str:
        return unstrip(self.fs, path)

    def is_empty(self) -> bool:
        """True when the root is missing or holds nothing but hidden leftovers (``.tmp-*``)."""
        if not self.fs.exists(self.root):
            return True
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        return all(n.startswith(".") for n in names)

    def read_manifest(self) -> dict[str, Any] | None:
        manifest = load_manifest(self.manifest_path, fs=self.fs, error=LayoutError, attempts=self.attempts,
                                 max_wait_s=self.max_wait_s)
        if manifest is not None and manifest.get("format") != FORMAT:
            raise LayoutError(f"{self.display(self.manifest_path)} is not an sddr shard manifest")
        return manifest

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        save_manifest(self.manifest_path, manifest, fs=self.fs, attempts=self.attempts, max_wait_s=self.max_wait_s)

    def clean_temporaries(self) -> int:
        """Remove leftovers of interrupted writes (``.tmp-*``) from every output folder."""
        return sum(remove_temporaries(self.fs, d) for d in (self.root, self.shards_dir, self.errors_dir))


def _completed(layout: OutputLayout) -> tuple[dict[str, Any], list[str], list[str]]:
    manifest = layout.read_manifest()
    if manifest is None:
        raise LayoutError(f"{layout.uri}: no {MANIFEST}; not the output of an sddr shard job")
    done = manifest.get("completed", {})
    shards = [layout.shard_path(int(k)) for k in sorted(done, key=int)]
    errors = [layout.errors_path(int(k)) for k, v in sorted(done.items(), key=lambda kv: int(kv[0])) if v.get("errors")]
    return manifest, shards, errors


def completed_shards(layout: OutputLayout) -> tuple[dict[str, Any], list[str]]:
    """The manifest of an output root and the paths of its completed shards, in order."""
    manifest, shards, _ = _completed(layout)
    return manifest, shards


def read_shards(uri: str, storage_options: Mapping[str, Any] | None = None, *,
                columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of the completed shards of an output root, as one Arrow table.

    Only shards the manifest lists as completed are read. Plain pyarrow/pandas on
    ``OUTPUT/shards/`` give the same rows (published files are only ever complete)."""
    layout = OutputLayout(uri, storage_options)
    manifest, shards, _ = _completed(layout)
    return read_parquet(layout.fs, shards, columns=columns, schema=schema_for(manifest["kind"]))


def read_errors(uri: str, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """The failed rows (id, source, stage, reason) of the completed shards."""
    layout = OutputLayout(uri, storage_options)
    _, _, errors = _completed(layout)
    return read_parquet(layout.fs, errors, schema=ERROR_SCHEMA)


def published_shards(layout: OutputLayout) -> list[str]:
    """Every ``*.parquet`` under ``shards/`` (completed or left by an interrupted run)."""
    return parquet_files(layout.fs, layout.shards_dir)
