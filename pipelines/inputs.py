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
  optionally ``source``, and for point clouds the camera columns (:data:`CAMERA_FIELDS`:
  ``fx``, ``fy``, ``cx``, ``cy`` required; ``camera_width``, ``camera_height``,
  ``camera_to_world``, ``sparse_depth``, ``depth``, ``depth_unit`` optional).
* ``colmap`` (point clouds): a COLMAP workspace, ``sparse/0`` (or ``sparse/``) with
  ``cameras``/``images``/``points3D`` ``.bin`` or ``.txt`` and ``images/``; PINHOLE or
  SIMPLE_PINHOLE cameras (undistort first). Ids are the registered images' names without
  extension; each carries its intrinsics, pose and usable SfM observations (track of at
  least 2 images, reprojection error at most 2 px).
* ``transforms`` (point clouds): a nerfstudio / instant-ngp ``transforms.json`` (or a
  folder holding one). Ids are the frames' ``file_path`` without extension; each carries
  its intrinsics, pose and nerfstudio's ``depth_file_path`` (unit
  ``depth_unit_scale_factor``, default 1e-3).

With ``cameras=True`` (the point-cloud job) ``auto`` also recognises a ``.json`` file as
``transforms`` and a folder with a COLMAP model (``sparse/0`` or ``sparse/``) as
``colmap`` (a folder with both: ``colmap``, whose SfM points can scale the maps), else a
folder with ``transforms.json`` as ``transforms``. Remote COLMAP models are copied to a
temporary folder to be read (pycolmap reads local files only).

Ids are data, never file names (shards are named by index), but they must be clean keys:
non-empty, no control characters, no backslashes, not absolute, no ``.``/``..`` or empty
path segments. Other characters (spaces, unicode) are kept as they are.
"""
from __future__ import annotations

import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from sddr_pipeline.data import IMAGE_EXTENSIONS
from sddr_pipeline.io.names import name_problem, shorten
from sddr_pipeline.shards.io import (DEFAULT_MAX_WAIT_S, filesystem, join, parquet_files, protocols, read_bytes, retry,
                                     unstrip)

INPUT_KINDS: tuple[str, ...] = ("auto", "images", "dataset", "list", "parquet", "colmap", "transforms")
MAX_ID_LENGTH = 1024
#: Per-image camera columns of point-cloud inputs, as the read step hands them on.
#: Intrinsics in the integer-pixel-centre convention (the centre of pixel (row v, col u)
#: is at (u, v)) for an image of ``camera_width`` x ``camera_height`` (null: the image's
#: own size); ``camera_to_world`` 16 floats, a row-major 4x4 with OpenCV camera axes (x
#: right, y down, z forward); ``sparse_depth`` ``.npy`` Nx3 (row, col, metric depth) of
#: SfM points or LiDAR samples; ``depth_uri``/``depth_unit`` a depth map to read (PNG or
#: ``.npy``; metres = value * unit); ``depth`` the same map's bytes in a Parquet input.
CAMERA_FIELDS: tuple[pa.Field, ...] = (
    pa.field("fx", pa.float64()), pa.field("fy", pa.float64()), pa.field("cx", pa.float64()), pa.field("cy", pa.float64()),
    pa.field("camera_width", pa.int32()), pa.field("camera_height", pa.int32()),
    pa.field("camera_to_world", pa.list_(pa.float64())), pa.field("sparse_depth", pa.binary()),
    pa.field("depth_uri", pa.string()), pa.field("depth_unit", pa.float64()),
)
CAMERA_COLUMNS: tuple[str, ...] = tuple(f.name for f in CAMERA_FIELDS)
#: Columns of a Parquet input the point-cloud job reads besides ``id``/``image``/``source``.
PARQUET_CAMERA_COLUMNS: tuple[str, ...] = ("fx", "fy", "cx", "cy", "camera_width", "camera_height", "camera_to_world",
                                           "sparse_depth", "depth", "depth_unit")
REQUIRED_CAMERA_COLUMNS: tuple[str, ...] = ("fx", "fy", "cx", "cy")


class InputError(ValueError):
    """The input cannot be listed, or holds invalid or duplicate ids."""


@dataclass(frozen=True)
class InputSet:
    """The sorted ids of an input and, per id, its image's source URI.

    For ``parquet`` inputs ``sources`` name the file each row came from, ``rows`` give each
    id's row number in that file (the read step fetches rows by position) and ``files``
    list the files; for ``dataset`` inputs ``root``/``layout`` reopen the dataset and
    ``sources`` are ``root/id`` until the read step fills in the image's path. ``cameras``
    (``colmap``, ``transforms``) maps each id to its :data:`CAMERA_COLUMNS` values."""

    uri: str
    kind: str
    ids: tuple[str, ...]
    sources: tuple[str, ...]
    files: tuple[str, ...] = ()
    root: str | None = None
    layout: str | None = None
    cameras: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    rows: Mapping[str, int] = field(default_factory=dict)

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


def _list_parquet(uri: str, fs, path: str, cameras: bool = False) -> InputSet:
    files = [path] if fs.isfile(path) else parquet_files(fs, path)
    if not files:
        raise InputError(f"input {uri} holds no .parquet files")
    pairs, rows = [], {}
    for f in files:
        schema = pq.read_schema(f, filesystem=fs)
        missing = {"id", "image"} - set(schema.names)
        if missing:
            raise InputError(f"{unstrip(fs, f)}: image shards need columns 'id' and 'image'; missing {sorted(missing)}")
        no_camera = [c for c in REQUIRED_CAMERA_COLUMNS if c not in schema.names]
        if cameras and no_camera:
            raise InputError(f"{unstrip(fs, f)}: point clouds need the intrinsics columns "
                             f"{', '.join(REQUIRED_CAMERA_COLUMNS)}; missing {', '.join(no_camera)}")
        ids = pq.read_table(f, filesystem=fs, columns=["id"]).column("id").to_pylist()
        where = unstrip(fs, f)
        pairs.extend((check_id(i, where), where) for i in ids)
        rows.update((i, k) for k, i in enumerate(ids))
    return _finish(uri, "parquet", pairs, files=tuple(unstrip(fs, f) for f in files), rows=rows)


def _colmap_model(fs, path: str) -> str | None:
    """The folder of the COLMAP model of a workspace (``sparse/0``, else ``sparse``), or None."""
    for sub in ("sparse/0", "sparse"):
        folder = join(path, sub)
        if any(fs.isfile(join(folder, f"cameras.{ext}")) for ext in ("bin", "txt")):
            return folder
    return None


def camera_columns(intrinsics, pose=None, sparse_depth=None, depth_uri: str | None = None,
                depth_unit: float | None = None) -> dict[str, Any]:
    """The :data:`CAMERA_COLUMNS` values of one image (an :class:`~sddr_pipeline.geometry.Intrinsics`,
    a 4x4 camera-to-world or None, Nx3 sparse depths or None, a depth map's URI and unit)."""
    from sddr_pipeline.shards.schema import encode_array

    return {"fx": intrinsics.fx, "fy": intrinsics.fy, "cx": intrinsics.cx, "cy": intrinsics.cy,
            "camera_width": intrinsics.width, "camera_height": intrinsics.height,
            "camera_to_world": None if pose is None else [float(v) for v in pose.reshape(-1)],
            "sparse_depth": None if sparse_depth is None else encode_array(sparse_depth),
            "depth_uri": depth_uri, "depth_unit": depth_unit}


def _list_colmap(uri: str, fs, path: str) -> InputSet:
    from sddr_pipeline.geometry.cameras import CameraError, colmap_views, require_pycolmap

    model = _colmap_model(fs, path)
    if model is None:
        raise InputError(f"{uri}: no COLMAP model (sparse/0 or sparse/ with cameras.bin or cameras.txt)")
    images = join(path, "images")
    pycolmap = require_pycolmap()
    where = unstrip(fs, model)
    with tempfile.TemporaryDirectory(prefix="sddr-colmap-") as tmp:
        local = model
        if not is_local(fs):
            for name in fs.ls(model, detail=False):
                base = name.rstrip("/").rsplit("/", 1)[-1]
                if base.split(".")[0] in ("cameras", "images", "points3D", "rigs", "frames"):
                    fs.get(name, str(Path(tmp) / base))
            local = tmp
        try:
            views = colmap_views(pycolmap.Reconstruction(local), where)
        except CameraError as exc:
            raise InputError(str(exc)) from None
    if not views:
        raise InputError(f"{where}: the model has no registered images")
    pairs, cameras = [], {}
    for v in views:
        ident = check_id(id_from_path(v.name), where)
        pairs.append((ident, unstrip(fs, join(images, v.name))))
        cameras[ident] = camera_columns(v.intrinsics, v.camera_to_world, v.sparse_depth)
    return _finish(uri, "colmap", pairs, cameras=cameras)


def _list_transforms(uri: str, fs, path: str, attempts: int | None, max_wait_s: float) -> InputSet:
    from sddr_pipeline.geometry.cameras import CameraError, parse_transforms, transforms_views

    file = path if fs.isfile(path) else join(path, "transforms.json")
    where = unstrip(fs, file)
    base = file.rsplit("/", 1)[0] if "/" in file else ""
    try:
        views = transforms_views(parse_transforms(read_bytes(fs, file, attempts=attempts, max_wait_s=max_wait_s), where,
                                                  InputError), where)
    except CameraError as exc:
        raise InputError(str(exc)) from None
    pairs, cameras = [], {}
    for v in views:
        ident = check_id(id_from_path(v.name), where)
        depth = None if v.depth_path is None else unstrip(fs, join(base, v.depth_path) if base else v.depth_path)
        pairs.append((ident, unstrip(fs, join(base, v.name) if base else v.name)))
        cameras[ident] = camera_columns(v.intrinsics, v.camera_to_world, None, depth, v.depth_unit)
    return _finish(uri, "transforms", pairs, cameras=cameras)


def detect_kind(uri: str, fs, path: str, cameras: bool = False) -> str:
    """``images``, ``dataset``, ``list`` or ``parquet`` for an input URI (see module doc);
    with ``cameras`` also ``colmap`` or ``transforms``."""
    if not fs.exists(path):
        raise InputError(f"input {uri} does not exist")
    if cameras and fs.isfile(path) and path.endswith(".json"):
        return "transforms"
    if fs.isfile(path):
        return "parquet" if path.endswith(".parquet") else "list"
    if cameras and _colmap_model(fs, path) is not None:
        return "colmap"
    if cameras and fs.isfile(join(path, "transforms.json")):
        return "transforms"
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
                max_wait_s: float = DEFAULT_MAX_WAIT_S, cameras: bool = False) -> InputSet:
    """List an input (see the module doc for the kinds); ids come back sorted. Transient
    storage errors are retried for up to ``max_wait_s`` seconds (and ``attempts`` tries).
    ``cameras``: the job needs each image's camera (point clouds): ``auto`` detects
    COLMAP models and transforms files, and inputs that cannot have cameras (image
    folders, list files, Parquet without intrinsics columns) are refused."""
    if kind not in INPUT_KINDS:
        raise InputError(f"unknown input kind {kind!r}; use one of {', '.join(INPUT_KINDS)}")
    fs, path = filesystem(uri, storage_options)
    listers = {
        "images": lambda: _list_images(uri, fs, path),
        "dataset": lambda: _list_dataset(uri, path, layout),
        "list": lambda: _list_file(uri, fs, path, attempts, max_wait_s),
        "parquet": lambda: _list_parquet(uri, fs, path, cameras),
        "colmap": lambda: _list_colmap(uri, fs, path),
        "transforms": lambda: _list_transforms(uri, fs, path, attempts, max_wait_s),
    }

    def listing() -> InputSet:  # detection too touches the storage, so it is retried with the listing
        found = kind
        if found == "auto":
            found = "dataset" if layout not in ("auto", "images") else detect_kind(uri, fs, path, cameras)
        if found in ("images", "dataset", "parquet", "colmap", "transforms") and not fs.exists(path):
            raise InputError(f"input {uri} does not exist")
        if found == "dataset" and not is_local(fs):
            raise InputError(f"dataset inputs (with ground truth) must be local folders, got {uri}")
        if cameras and found in ("images", "list"):
            raise InputError(f"input {uri} is {'an image folder' if found == 'images' else 'a list file'}, which has no "
                             "cameras; point clouds need a COLMAP model, a transforms.json, Parquet with intrinsics "
                             "columns, or a dataset with intrinsics (e.g. an RGB-D sequence)")
        return listers[found]()

    return retry(listing, what=f"listing {uri}", attempts=attempts, max_wait_s=max_wait_s)
