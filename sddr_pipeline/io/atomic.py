"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a resumed run) therefore never sees a half-written file under its final
name. Temporaries start with ``.tmp-`` so they are easy to recognise and clean up.
"""
from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Callable

TMP_PREFIX = ".tmp-"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], object]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def remove_temporaries(root: Path) -> int:
    """Delete leftover ``.tmp-*`` files under ``root`` (from an interrupted run)."""
    n = 0
    for p in Path(root).rglob(f"{TMP_PREFIX}*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n
