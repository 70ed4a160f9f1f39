"""Outputs that a later run resumes: their manifest, settings identity, input and writer.

Every command whose OUTPUT can be resumed (``sddr refine``, ``sddr pipeline ...``,
pseudo-labels, training) records in it what made it, and a resumed run must be the same
job: this module owns the checks they share, so each refusal reads the same way.

- :func:`check_settings`: the settings identity; one message naming every differing
  key with its old and new value, e.g. ``mode: 'one-stage' -> 'two-stage'``. A key
  missing on one side counts as None, so a setting added later (default None) does not
  break resuming older outputs; nested mappings are compared key by key.
- :func:`check_input`: an OUTPUT made from another INPUT is refused (same-named items
  there are other items).
- :func:`load_manifest` / :func:`save_manifest`: the manifest JSON on a local path
  (written by :mod:`.atomic`) or any fsspec URI (published whole, with storage retries);
  a file that is not a JSON object is an error naming it.
- :func:`input_fingerprint` / :func:`same_input`: what an item's result depends on, so a
  resumed run redoes only items whose input changed.
- :func:`locked_output`: one writer per local OUTPUT (:mod:`.lock`); object stores are
  not locked (fsspec has no portable create-if-absent).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, ParamSpec, TypeVar

import numpy as np

from .atomic import atomic_write_bytes
from .lock import OutputLockError, holding_output_lock

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

NEW_OUTPUT = "use a new output"
SHOWN_VALUE_CHARS = 200
P = ParamSpec("P")
R = TypeVar("R")
ErrorType = Callable[[str], Exception]


class ResumeMismatch(ValueError):
    """A resumed output was made with other settings or from another input."""


class ManifestError(ValueError):
    """A manifest file is not valid JSON or does not hold a JSON object."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else f"{text[:SHOWN_VALUE_CHARS - 3]}..."


def setting_differences(old: Mapping[str, Any], new: Mapping[str, Any], *,
                        ignore: Collection[str] = ()) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` of every setting that differs, keys sorted; a
    missing key counts as None, nested mappings give dotted keys (``resolutions.low``)."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new), key=str):
        if key in ignore:
            continue
        before, now = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(now, Mapping):
            out.update({f"{key}.{k}": v for k, v in setting_differences(before, now).items()})
        elif before != now:
            out[str(key)] = (before, now)
    return out


def settings_message(target: str, differences: Mapping[str, tuple[Any, Any]], advice: str = NEW_OUTPUT) -> str:
    """The one refusal of a resume with other settings: ``cannot resume TARGET: it was
    made with other settings (key: old -> new; ...); ADVICE``."""
    changes = "; ".join(f"{key}: {_shown(old)} -> {_shown(new)}" for key, (old, new) in differences.items())
    return f"cannot resume {target}: it was made with other settings ({changes}); {advice}"


def check_settings(old: Mapping[str, Any], new: Mapping[str, Any], target: str | os.PathLike, *,
                   ignore: Collection[str] = (), advice: str = NEW_OUTPUT, error: ErrorType = ResumeMismatch) -> None:
    """Raise ``error`` (the caller's own type) with :func:`settings_message` unless the
    recorded settings ``old`` equal ``new`` outside the top-level keys ``ignore``."""
    differences = setting_differences(old, new, ignore=ignore)
    if differences:
        raise error(settings_message(str(target), differences, advice))


def check_input(recorded: Any, current: Any, target: str | os.PathLike, *, advice: str = NEW_OUTPUT,
                error: ErrorType = ResumeMismatch) -> None:
    """Raise ``error`` unless the output ``target`` was made from the input ``current``."""
    if recorded != current:
        raise error(f"cannot resume {target}: it was made from input {recorded}, not {current}; {advice}")


def local_output(location: str | os.PathLike) -> Path | None:
    """The local folder or file of an output location (a path, or a ``file://`` URI);
    None for other stores. A ``Path`` is always local."""
    if isinstance(location, os.PathLike):
        return Path(location)
    scheme, sep, rest = str(location).partition("://")
    if not sep:
        return Path(location)
    return Path(rest) if scheme in ("file", "local") else None


def _local_path(location: str | os.PathLike, fs: AbstractFileSystem | None) -> Path | None:
    """The local file a manifest location names (with ``fs``: a path of it); None for another store."""
    if fs is None:
        return local_output(location)
    from ..shards.io import protocols

    return Path(location) if {"file", "local"} & set(protocols(fs)) else None


def _remote(location: str | os.PathLike, fs: AbstractFileSystem | None) -> tuple[AbstractFileSystem, str]:
    from ..shards.io import filesystem

    return (fs, str(location)) if fs is not None else filesystem(str(location))


def _retries(attempts: int | None, max_wait_s: float | None) -> dict[str, Any]:
    return {k: v for k, v in (("attempts", attempts), ("max_wait_s", max_wait_s)) if v is not None}


def parse_manifest(data: bytes | str, where: str, error: ErrorType = ManifestError) -> dict[str, Any]:
    """The JSON object in ``data``, read from ``where``; else ``error`` naming ``where``."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise error(f"{where} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise error(f"{where} does not hold a JSON object (it holds a {type(manifest).__name__})")
    return manifest


def load_manifest(location: str | os.PathLike, *, fs: AbstractFileSystem | None = None, error: ErrorType = ManifestError,
                  attempts: int | None = None, max_wait_s: float | None = None) -> dict[str, Any] | None:
    """The manifest at ``location`` (a local path or fsspec URI; with ``fs``, a path of
    that filesystem), or None when there is none. Remote reads are retried as
    :func:`sddr_pipeline.shards.io.retry` does (``attempts``, ``max_wait_s``)."""
    path = _local_path(location, fs)
    if path is not None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return parse_manifest(data, str(path), error)
    from ..shards.io import read_bytes, unstrip

    rfs, rpath = _remote(location, fs)
    if not rfs.exists(rpath):
        return None
    where = str(location) if fs is None else unstrip(rfs, rpath)
    return parse_manifest(read_bytes(rfs, rpath, **_retries(attempts, max_wait_s)), where, error)


def save_manifest(location: str | os.PathLike, manifest: Mapping[str, Any], *, fs: AbstractFileSystem | None = None,
                  attempts: int | None = None, max_wait_s: float | None = None) -> None:
    """Write ``manifest`` (indented JSON) whole to ``location`` (as :func:`load_manifest`
    reads it): a reader or a resumed run never sees half a manifest."""
    data = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()
    path = _local_path(location, fs)
    if path is not None:
        atomic_write_bytes(path, data)
        return
    from ..shards.io import publish_bytes

    publish_bytes(*_remote(location, fs), data, **_retries(attempts, max_wait_s))


def input_fingerprint(path: Path, *context: np.ndarray | None) -> dict[str, Any] | None:
    """What an item's result depends on: the input file's size, mtime and SHA-256, and a
    SHA-256 of the ``context`` arrays (e.g. ground truth and intrinsics a predictor may
    use; None entries are skipped). None when the file cannot be read (the item's read
    then reports why)."""
    try:
        stat = path.stat()
        data = path.read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256()
    for array in context:
        if array is not None:
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": hashlib.sha256(data).hexdigest(),
        "context_sha256": digest.hexdigest(),
    }


def same_input(recorded: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> bool:
    """Whether an input is unchanged since it was processed; decided by content, so a copy
    with a new mtime is not redone, and an unknown fingerprint never matches."""
    keys = ("size", "sha256", "context_sha256")
    return bool(recorded) and current is not None and all(recorded.get(k) == current[k] for k in keys)


def locked_output(output_of: Callable[[Mapping[str, Any]], str | os.PathLike],
                  error: type[Exception] = OutputLockError) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a writer so that it runs holding the lock of its output (``output_of``
    gets the writer's arguments by name) when that output is local; a refusal (another
    live writer) is raised as ``error``, the writer's own type."""
    def folder(args: Mapping[str, Any]) -> Path | None:
        return local_output(output_of(args))

    return holding_output_lock(folder, error)


__all__ = [
    "ManifestError",
    "NEW_OUTPUT",
    "ResumeMismatch",
    "check_input",
    "check_settings",
    "input_fingerprint",
    "load_manifest",
    "local_output",
    "locked_output",
    "parse_manifest",
    "same_input",
    "save_manifest",
    "setting_differences",
    "settings_message",
]
