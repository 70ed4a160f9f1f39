"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a resumed run) therefore never sees a half-written file under its final
name. Temporaries start with ``.tmp-`` so they are easy to recognise and clean up.
"""
from __future__ import annotations

import io
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

TMP_PREFIX = ".tmp-"


def _default_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (0o644 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: what every atomically written file gets, whatever mode its writer chose for the
#: temporary (safetensors writes 0600, which other users and containers cannot read)
_FILE_MODE = _default_mode()


def _fsync(path: Path) -> None:
    with open(path, "r+b") as f:  # a writable handle: Windows' fsync refuses read-only ones
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that pick a format
    by extension still work) for the caller to write; on success it is synced and renamed
    onto ``path`` with the mode a plain ``open()`` would give, on any exception removed.
    For writers that want a file name (Open3D, safetensors); :func:`atomic_write` is the
    file-object form."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[io.BufferedWriter], object]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path`` and rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def remove_temporaries(root: Path) -> int:
    """Delete leftover ``.tmp-*`` files under ``root`` (from an interrupted run)."""
    n = 0
    for p in Path(root).rglob(f"{TMP_PREFIX}*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n
