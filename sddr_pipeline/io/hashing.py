"""The sha256 of files' bytes: weights versions, checkpoint integrity, predictor versions."""
from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20


def sha256_files(*paths: str | os.PathLike[str]) -> str:
    """Hex sha256 of the files' bytes read in order (one file: its ``sha256sum``), in 1 MiB
    chunks so large weights never sit in memory whole."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()
