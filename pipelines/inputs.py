"""What a pipeline reads: the input ids and where each one's image comes from.

Input kinds (``auto`` picks one from the URI):

* ``images``: a folder or prefix of images, any depth (local, ``s3://``, ...). The id is
  the path relative to the folder without its extension (``scene/im0``), the name
  ``sddr refine`` uses; hidden files and folders are skipped.
* ``dataset``: a local dataset folder with ground truth (generic, Middlebury, KITTI, NYU,
  RGB-D sequences; see ``open_dataset``). Ids are the dataset's sample names and each
  row carries its ground truth, so the ``simulated`` predictor works.
* ``list``: a text file, one image per line: ``URI`` or ``URI<TAB>ID`` (or the two
  separated by spaces). Relative URIs are relative to the list file; without an ID the
  id is the URI's path without its extension: relative to the list file's folder for
  entries inside it, else the whole path (bucket or host included). Blank lines and
  ``#`` comments are skipped.
* ``parquet``: a ``.parquet`` file or a folder of them with an ``id`` column and an
  ``image`` column (encoded image bytes, or a HuggingFace-style struct with ``bytes``),
  optionally ``source``.

Ids are data, never file names (shards are named by index), but they must be clean keys:
non-empty, no control characters, no backslashes, not absolute, no ``.``/``..`` or empty
path segments. Other characters (spaces, unicode) are kept as they are.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow.parquet as pq

from sddr_pipeline.data import IMAGE_EXTENSIONS
from sddr_pipeline.io.names import name_problem, shorten
from sddr_pipeline.shards.io import (DEFAULT_MAX_WAIT_S, filesystem, join, parquet_files, protocols, read_bytes, retry,
                                     unstrip)

INPUT_KINDS: tuple[str, ...] = ("auto", "images", "dataset", "list", "parquet")
MAX_ID_LENGTH = 1024


class InputError(ValueError):
    """The input cannot be listed, or holds invalid or duplicate ids."""


@dataclass(frozen=True)
class InputSet:
    """The sorted ids of an input and, per id, its image's source URI.

    For ``parquet`` inputs ``sources`` name the file each row came from and ``files`` list
    the files to read; for ``dataset`` inputs ``root``/``layout`` reopen the dataset and
    ``sources`` are ``root/id`` until the read step fills in the image's path."""

    uri: str
    kind: str
    ids: tuple[str, ...]
    sources: tuple[str, ...]
    files: tuple[str, ...] = ()
    root: str | None = None
    layout: str | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri, "kind": self.kind, "count": len(self.ids)}
        if self.layout:
            out["layout"] = self.layout
        if self.files:
            out["files"] = len(self.files)
        return out


def check_id(value: str, where: str) -> str:
    """Return ``value`` if it is a clean id (:func:`sddr_pipeline.io.names.name_problem`, at
    most :data:`MAX_ID_LENGTH` characters), else raise :class:`InputError` showing at most
    the id's first 80 characters."""
    problem = name_problem(value)
    if problem is None and len(value) > MAX_ID_LENGTH:
        problem = f"it is longer than {MAX_ID_LENGTH} characters"
    if problem:
        raise InputError(f"{where}: invalid id {shorten(value)}: {problem}")
    return value


def id_from_path(path: str) -> str:
    """An id from a relative or absolute path: POSIX, normalised, no leading '/', no extension."""
    norm = posixpath.normpath(path.replace("\\", "/")).lstrip("/")
    stem, ext = posixpath.splitext(norm)
    return stem if ext else norm


def is_local(fs) -> bool:
    return "file" in protocols(fs)


def _is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _finish(uri: str, kind: str, pairs: list[tuple[str, str]], **kw: Any) -> InputSet:
    if not pairs:
        raise InputError(f"input {uri} holds no images")
    pairs.sort(key=lambda p: p[0])
    ids = [p[0] for p in pairs]
    dupes = sorted({a for a, b in zip(ids, ids[1:]) if a == b})
    if dupes:
        shown = ", ".join(shorten(d) for d in dupes[:5])
        raise InputError(f"input {uri}: {len(dupes)} ids occur more than once ({shown}{' ...' if len(dupes) > 5 else ''}); "
                         "ids must be unique (e.g. a.png and a.jpg both give id 'a')")
    return InputSet(uri, kind, tuple(ids), tuple(p[1] for p in pairs), **kw)


def _list_images(uri: str, fs, path: str) -> InputSet:
    pairs = []
    for p in sorted(fs.find(path, withdirs=False)):
        rel = p[len(path):].lstrip("/")
        if not rel or any(part.startswith(".") for part in rel.split("/")) or not _is_image_name(rel):
            continue
        pairs.append((check_id(id_from_path(rel), f"{uri}: {shorten(rel)}"), unstrip(fs, p)))
    return _finish(uri, "images", pairs)


def _list_dataset(uri: str, path: str, layout: str) -> InputSet:
    from sddr_pipeline.data import DatasetError, open_dataset

    try:
        dataset = open_dataset(Path(path), layout=layout)
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        raise InputError(f"cannot read dataset {uri}: {exc}") from exc
    root = str(Path(path).resolve())
    pairs = [(check_id(name, str(uri)), join(root, name)) for name in dataset.names]
    return _finish(uri, "dataset", pairs, root=root, layout=dataset.layout)


def _parse_list_line(line: str, lineno: int, uri: str) -> tuple[str, str | None]:
    fields = line.split("\t") if "\t" in line else line.split()
    fields = [f.strip() for f in fields]
    if len(fields) > 2 or not fields[0]:
        raise InputError(f"{uri}:{lineno}: expected 'URI' or 'URI<TAB>ID', got {line!r}")
    return fields[0], (fields[1] if len(fields) == 2 else None)


def _list_file(uri: str, fs, path: str, attempts: int | None, max_wait_s: float) -> InputSet:
    try:
        text = read_bytes(fs, path, attempts=attempts, max_wait_s=max_wait_s).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"list file {uri} is not UTF-8 text ({exc})") from exc
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    local = is_local(fs)
    pairs = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry, given = _parse_list_line(line, lineno, uri)
        if "://" in entry:
            source, derived = entry, entry.split("://", 1)[1]
        elif local and entry.startswith("/"):
            source, derived = entry, entry
        else:
            resolved = posixpath.normpath(join(parent, entry)) if parent else posixpath.normpath(entry)
            inside = not posixpath.normpath(entry).startswith("..")
            source, derived = unstrip(fs, resolved), (entry if inside else resolved)
        ident = given if given is not None else id_from_path(derived)
        pairs.append((check_id(ident, f"{uri}:{lineno}"), source))
    return _finish(uri, "list", pairs)


def _list_parquet(uri: str, fs, path: str) -> InputSet:
    files = [path] if fs.isfile(path) else parquet_files(fs, path)
    if not files:
        raise InputError(f"input {uri} holds no .parquet files")
    pairs = []
    for f in files:
        schema = pq.read_schema(f, filesystem=fs)
        missing = {"id", "image"} - set(schema.names)
        if missing:
            raise InputError(f"{unstrip(fs, f)}: image shards need columns 'id' and 'image'; missing {sorted(missing)}")
        ids = pq.read_table(f, filesystem=fs, columns=["id"]).column("id").to_pylist()
        where = unstrip(fs, f)
        pairs.extend((check_id(i, where), where) for i in ids)
    return _finish(uri, "parquet", pairs, files=tuple(unstrip(fs, f) for f in files))


def detect_kind(uri: str, fs, path: str) -> str:
    """``images``, ``dataset``, ``list`` or ``parquet`` for an input URI (see module doc)."""
    if not fs.exists(path):
        raise InputError(f"input {uri} does not exist")
    if fs.isfile(path):
        return "parquet" if path.endswith(".parquet") else "list"
    if parquet_files(fs, path) and not any(_is_image_name(p) for p in fs.ls(path, detail=False)):
        return "parquet"
    if is_local(fs):
        from sddr_pipeline.data import DatasetError
        from sddr_pipeline.data.datasets import detect_layout

        try:
            return "images" if detect_layout(path) == "images" else "dataset"
        except (DatasetError, ValueError) as exc:
            raise InputError(f"cannot read input {uri}: {exc}") from exc
    return "images"


def list_inputs(uri: str, *, kind: str = "auto", layout: str = "auto",
                storage_options: Mapping[str, Any] | None = None, attempts: int | None = None,
                max_wait_s: float = DEFAULT_MAX_WAIT_S) -> InputSet:
    """List an input (see the module doc for the kinds); ids come back sorted. Transient
    storage errors are retried for up to ``max_wait_s`` seconds (and ``attempts`` tries)."""
    if kind not in INPUT_KINDS:
        raise InputError(f"unknown input kind {kind!r}; use one of {', '.join(INPUT_KINDS)}")
    fs, path = filesystem(uri, storage_options)
    listers = {
        "images": lambda: _list_images(uri, fs, path),
        "dataset": lambda: _list_dataset(uri, path, layout),
        "list": lambda: _list_file(uri, fs, path, attempts, max_wait_s),
        "parquet": lambda: _list_parquet(uri, fs, path),
    }

    def listing() -> InputSet:  # detection too touches the storage, so it is retried with the listing
        found = kind
        if found == "auto":
            found = "dataset" if layout not in ("auto", "images") else detect_kind(uri, fs, path)
        if found in ("images", "dataset", "parquet") and not fs.exists(path):
            raise InputError(f"input {uri} does not exist")
        if found == "dataset" and not is_local(fs):
            raise InputError(f"dataset inputs (with ground truth) must be local folders, got {uri}")
        return listers[found]()

    return retry(listing, what=f"listing {uri}", attempts=attempts, max_wait_s=max_wait_s)
