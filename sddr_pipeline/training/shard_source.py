"""Training shards of ``sddr pseudolabel`` read directly from their URI (``kind: shards``).

``root`` is any fsspec URI (a local path, ``file://``, ``s3://`` with ``storage_options``
passed to the filesystem, ``gs://``, ...) naming one of:

* the OUTPUT of ``sddr pseudolabel`` (with ``manifest.json``): the shards the manifest
  lists as completed, in shard order, with their row counts from the manifest (nothing
  else is read at start but the listing of ``shards/`` and the first file's footer);
* a folder of ``*.parquet`` training shards (or one with a ``shards/`` subfolder) without
  a manifest: every file's footer is read at start for its row count;
* one ``.parquet`` file.

Rows are indexed globally (file order, then row order) and read lazily: example ``i``
picks a row, the reader finds its file and row group and reads only that row group's
needed columns (``id``, ``low``, ``high``, ``gs``; ``image`` only to relabel a crop), then
keeps the decoded row in a small per-process LRU cache. Only the byte ranges of those
column chunks are fetched (from the cached footer), never the rest of the file. A Parquet
row group is the smallest readable unit, so each uncached row costs one row group of
those columns: shards written with small row groups are cheaper to train from.

The raw LOW/HIGH predictions are in the predictor's own space (depth or disparity);
``prediction_space`` says which: ``disparity``/``depth``, or ``auto``: a per-row
``prediction_space`` column when the shards have one, else inferred once from the first
rows: the stored refined map (``depth``, normalised disparity-like by the format) is
positively correlated with a disparity-like LOW prediction and negatively with a depth
one; an ambiguous sign is an error asking for the setting.

Errors name the file (and row): a missing root, a file that is not a training shard (no
``gs``/``low``/``high`` column), a manifest of another kind, a file the manifest lists but
storage lacks, a null or malformed array. Shards made from a validation set (its folder
name in the root, in the pseudo-label job's input, or in a row's ``source``) are refused.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow.parquet as pq
import torch
from fsspec.parquet import AlreadyBufferedFile

from ..inference.normalize import resize
from ..io.names import shorten
from ..shards.io import join, parquet_files, retry
from ..shards.layout import MANIFEST, SHARDS_DIR, LayoutError, OutputLayout
from ..shards.schema import KIND_TRAINING, ShardFormatError, decode_array

#: Columns every training row must have for ``kind: shards``.
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "low", "high", "gs")
#: Read when the file has them.
OPTIONAL_COLUMNS: tuple[str, ...] = ("source", "prediction_space", "width", "height")
PREDICTION_SPACES: tuple[str, ...] = ("auto", "disparity", "depth")
#: Rows used to infer ``prediction_space: auto`` and the correlation it needs.
INFER_ROWS = 4
INFER_MIN_CORRELATION = 0.2
#: Column chunks closer than this (bytes) are fetched in one request.
MERGE_GAP = 64_000
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ShardSourceError(ValueError):
    """Training shards cannot be used; the message names the root, file or row."""


def is_uri(text: str) -> bool:
    """True for ``scheme://...`` (``file://`` included), False for a plain path."""
    return bool(_URI.match(text))


def held_out_name(uri: str | None, names: Iterable[str]) -> str | None:
    """The first validation-set folder name among the path components of ``uri``."""
    if not uri:
        return None
    parts = set(re.split(r"[/\\]+", str(uri)))
    found = sorted(parts & set(names))
    return found[0] if found else None


@dataclass(frozen=True)
class ShardRow:
    """One decoded training row: raw ``low``/``high`` predictions (float32, their working
    sizes) in ``space``, G_S ``gs`` (float32, image size), the image bytes when asked for."""

    name: str
    low: np.ndarray
    high: np.ndarray
    gs: np.ndarray
    space: str
    where: str
    image: bytes | None = None
    size: tuple[int, int] | None = None


def _column_spans(meta: pq.FileMetaData, group: int, columns: Iterable[str], max_gap: int | None = None) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of the chunks of ``columns`` in row group ``group``,
    neighbours (gaps up to ``max_gap`` bytes, default :data:`MERGE_GAP`) merged."""
    max_gap = MERGE_GAP if max_gap is None else max_gap
    wanted = set(columns)
    rg = meta.row_group(group)
    spans = []
    for j in range(rg.num_columns):
        col = rg.column(j)
        if col.path_in_schema.split(".")[0] not in wanted:
            continue
        start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        spans.append((int(start), int(start) + int(col.total_compressed_size)))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a - merged[-1][1] <= max_gap:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0


class TrainingShards:
    """Random access to the rows of training shards at ``uri`` (see the module docstring).

    ``held_out`` / ``held_out_layouts``: validation-set folder names and layouts to refuse.
    """

    def __init__(
        self,
        uri: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        prediction_space: str = "auto",
        held_out: Iterable[str] = (),
        held_out_layouts: Iterable[str] = (),
        cache_rows: int = 16,
        attempts: int = 5,
    ) -> None:
        if prediction_space not in PREDICTION_SPACES:
            raise ShardSourceError(f"prediction_space must be one of {list(PREDICTION_SPACES)}, got {prediction_space!r}")
        self.uri = str(uri)
        self.held_out = frozenset(held_out)
        self.held_out_layouts = frozenset(held_out_layouts)
        self.attempts = attempts
        name = held_out_name(self.uri, self.held_out)
        if name:
            raise ShardSourceError(f"data source {self.uri!r} is the validation set {name}: training never reads it")
        try:
            self.layout = OutputLayout(self.uri, storage_options, attempts=attempts)
        except Exception as exc:  # bad protocol, missing fsspec backend, bad options
            raise ShardSourceError(f"cannot open training shards at {self.uri}: {type(exc).__name__}: {exc}") from exc
        self.fs = self.layout.fs
        self._footers: dict[str, pq.FileMetaData] = {}
        self._checked: set[int] = set()
        self.files, self.counts = self._index()
        self.offsets = np.cumsum([0, *self.counts]).tolist()
        self._row = functools.lru_cache(maxsize=cache_rows)(self._read_row)
        self._check_file(0)
        self.space = self._resolve_space(prediction_space)

    # ------------------------------------------------------------------ index

    def display(self, path: str) -> str:
        return self.layout.display(path)

    def _index(self) -> tuple[list[str], list[int]]:
        root = self.layout.root
        try:
            if root.endswith(".parquet") and self.fs.isfile(root):
                files = [root]
                counts = [self._footer_of(root).num_rows]
            elif self.fs.exists(join(root, MANIFEST)):
                files, counts = self._from_manifest()
            else:
                if not self.fs.exists(root):
                    raise ShardSourceError(f"data source root {self.uri} does not exist")
                files = parquet_files(self.fs, root) or parquet_files(self.fs, join(root, SHARDS_DIR))
                if not files:
                    raise ShardSourceError(
                        f"no training shards at {self.uri}: no {MANIFEST} and no *.parquet files there or in "
                        f"{SHARDS_DIR}/ (expected the output of `sddr pseudolabel`)"
                    )
                counts = [self._footer_of(p).num_rows for p in files]
        except (ShardSourceError, ShardFormatError):
            raise
        except (LayoutError, OSError, ValueError) as exc:
            raise ShardSourceError(f"cannot read training shards at {self.uri}: {type(exc).__name__}: {exc}") from exc
        kept = [(p, n) for p, n in zip(files, counts) if n > 0]
        if not kept:
            raise ShardSourceError(f"the training shards at {self.uri} hold no rows")
        return [p for p, _ in kept], [int(n) for _, n in kept]

    def _from_manifest(self) -> tuple[list[str], list[int]]:
        manifest = self.layout.read_manifest()
        assert manifest is not None
        where = self.display(self.layout.manifest_path)
        if manifest.get("kind") != KIND_TRAINING:
            raise ShardSourceError(
                f"{where}: these are {manifest.get('kind')!r} shards of a {manifest.get('pipeline')!r} job, not "
                "training shards; make training shards with `sddr pseudolabel`"
            )
        source = manifest.get("input") or {}
        name = held_out_name(source.get("uri"), self.held_out)
        if name or source.get("layout") in self.held_out_layouts:
            raise ShardSourceError(
                f"{where}: the pseudo-labels were made from the validation set "
                f"{name or source.get('layout')} ({source.get('uri')}); training never reads it"
            )
        completed = manifest.get("completed") or {}
        keys = sorted(completed, key=int)
        files = [self.layout.shard_path(int(k)) for k in keys]
        counts = [int(completed[k].get("rows", 0)) for k in keys]
        published = {p.rstrip("/") for p in parquet_files(self.fs, self.layout.shards_dir)}
        for path, n in zip(files, counts):
            if n and path not in published:
                raise ShardSourceError(f"{self.display(path)} is listed as completed in {where} but does not exist")
        return files, counts

    def _footer_of(self, path: str) -> pq.FileMetaData:
        def read() -> pq.FileMetaData:
            with self.fs.open(path, "rb") as fh:
                return pq.read_metadata(fh)

        try:
            meta = retry(read, what=f"reading {self.display(path)}", attempts=self.attempts)
        except FileNotFoundError:
            raise ShardSourceError(f"{self.display(path)} does not exist") from None
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise ShardSourceError(f"{self.display(path)} is not a readable Parquet file: {exc}") from exc
        self._footers[path] = meta
        return meta

    def _footer(self, f: int) -> pq.FileMetaData:
        path = self.files[f]
        return self._footers[path] if path in self._footers else self._footer_of(path)

    def _check_file(self, f: int) -> pq.FileMetaData:
        """Footer of file ``f``, checked once: the training columns exist, the row count is
        the indexed one."""
        meta = self._footer(f)
        if f in self._checked:
            return meta
        where = self.display(self.files[f])
        names = meta.schema.to_arrow_schema().names
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise ShardSourceError(
                f"{where} is not a training shard: no {', '.join(repr(c) for c in missing)} column"
                f"{'s' if len(missing) > 1 else ''} (it has {', '.join(names)}); training shards are written by "
                "`sddr pseudolabel`"
            )
        if meta.num_rows != self.counts[f]:
            raise ShardSourceError(
                f"{where} has {meta.num_rows} rows but {self.counts[f]} were indexed (the manifest changed or the "
                "file was replaced while training read it)"
            )
        self._checked.add(f)
        return meta

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(file, row in file) of global row ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows at {self.uri}")
        f = bisect.bisect_right(self.offsets, index) - 1
        return f, index - self.offsets[f]

    def fingerprint(self) -> dict[str, Any]:
        """What the rows are: files, counts and a digest of both (a resumed run checks it)."""
        digest = hashlib.sha256()
        for path, n in zip(self.files, self.counts):
            digest.update(f"{path.rsplit('/', 1)[-1]}:{n}\n".encode())
        return {"kind": "shards", "root": self.uri, "files": len(self.files), "rows": len(self),
                "sha256": digest.hexdigest(), "prediction_space": self.space}

    # ------------------------------------------------------------------- rows

    def _read_group(self, f: int, group: int, columns: list[str]):
        """Columns ``columns`` of row group ``group`` of file ``f``: exactly their column
        chunks are fetched (byte ranges from the cached footer, one request per contiguous
        run), never the rest of the file (an object store's read-ahead would fetch far more)."""
        path = self.files[f]
        meta = self._footer(f)
        spans = _column_spans(meta, group, columns)

        def read():
            parts = self.fs.cat_ranges([path] * len(spans), [a for a, _ in spans], [b for _, b in spans], on_error="raise")
            data = {span: bytes(part) for span, part in zip(spans, parts)}
            fh = AlreadyBufferedFile(fs=None, path=path, mode="rb", cache_type="parts",
                                     cache_options={"data": data, "strict": True}, size=spans[-1][1])
            return pq.ParquetFile(fh, metadata=meta, pre_buffer=False).read_row_group(group, columns=columns, use_threads=False)

        try:
            return retry(read, what=f"reading {self.display(path)}", attempts=self.attempts)
        except FileNotFoundError:
            raise ShardSourceError(f"{self.display(path)} does not exist (it was removed while training read it)") from None

    def _raw_rows(self, f: int, rows: range, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Rows ``rows`` (within one row group) of file ``f`` as dicts."""
        meta = self._check_file(f)
        names = set(meta.schema.to_arrow_schema().names)
        columns = [*REQUIRED_COLUMNS, *(c for c in (*OPTIONAL_COLUMNS, *extra) if c in names)]
        start = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if rows.start < start + n:
                table = self._read_group(f, g, columns)
                return table.slice(rows.start - start, len(rows)).to_pylist()
            start += n
        raise IndexError(f"row {rows.start} out of range in {self.display(self.files[f])}")

    def row(self, index: int, image: bool = False) -> ShardRow:
        """Global row ``index``, decoded (``image``: with the image bytes)."""
        return self._row(int(index), bool(image))

    def _array(self, raw: Mapping[str, Any], key: str, where: str) -> np.ndarray:
        try:
            array = decode_array(raw[key])
        except ShardFormatError as exc:
            raise ShardSourceError(f"{where}: column {key!r}: {exc}") from None
        if array is None:
            raise ShardSourceError(f"{where}: column {key!r} is null")
        if array.ndim != 2 or array.size == 0 or not np.issubdtype(array.dtype, np.floating):
            raise ShardSourceError(f"{where}: column {key!r} must be a non-empty 2-D float map, got {array.dtype} {array.shape}")
        return np.asarray(array, dtype=np.float32)

    def _read_row(self, index: int, image: bool) -> ShardRow:
        f, r = self.locate(index)
        raw = self._raw_rows(f, range(r, r + 1), ("image",) if image else ())[0]
        where = f"{self.display(self.files[f])} row {r} (id {shorten(raw['id'])})"
        name = held_out_name(raw.get("source"), self.held_out)
        if name:
            raise ShardSourceError(f"{where}: made from the validation set {name} ({raw['source']}); training never reads it")
        space = raw.get("prediction_space") or self.space
        if space not in ("disparity", "depth"):
            raise ShardSourceError(f"{where}: prediction_space must be 'disparity' or 'depth', got {space!r}")
        data = None
        if image:
            data = raw.get("image")
            if not data:
                raise ShardSourceError(f"{where} has no image bytes (needed to relabel its crops)")
        size = (int(raw["height"]), int(raw["width"])) if raw.get("height") and raw.get("width") else None
        return ShardRow(
            name=str(raw["id"]), low=self._array(raw, "low", where), high=self._array(raw, "high", where),
            gs=self._array(raw, "gs", where), space=space, where=where, image=data, size=size,
        )

    # ----------------------------------------------------------------- space

    def _resolve_space(self, setting: str) -> str:
        if setting != "auto":
            return setting
        meta = self._check_file(0)
        names = set(meta.schema.to_arrow_schema().names)
        n = min(INFER_ROWS, meta.row_group(0).num_rows, self.counts[0])
        extra = ("depth",) if "depth" in names else ()
        rows = self._raw_rows(0, range(0, n), extra)
        if "prediction_space" in names and rows[0].get("prediction_space") in ("disparity", "depth"):
            return str(rows[0]["prediction_space"])
        where = self.display(self.files[0])
        if not extra:
            raise ShardSourceError(f"{where} has no refined 'depth' column to infer prediction_space from; "
                                   "set prediction_space: disparity or depth on this source")
        values = []
        for raw in rows:
            row_where = f"{where} row (id {shorten(raw['id'])})"
            low = self._array(raw, "low", row_where)
            refined = self._array(raw, "depth", row_where)
            small = resize(torch.from_numpy(np.nan_to_num(refined))[None, None], low.shape)[0, 0].numpy()
            values.append(_pearson(low, small))
        corr = float(np.median(values))
        if abs(corr) < INFER_MIN_CORRELATION:
            raise ShardSourceError(
                f"cannot tell whether the LOW/HIGH predictions in {where} are depth or disparity (correlation "
                f"{corr:+.2f} with the refined map); set prediction_space: disparity or depth on this source"
            )
        return "disparity" if corr > 0 else "depth"


__all__ = ["PREDICTION_SPACES", "REQUIRED_COLUMNS", "ShardRow", "ShardSourceError", "TrainingShards", "held_out_name", "is_uri"]
