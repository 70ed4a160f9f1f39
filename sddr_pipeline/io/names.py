"""The one check for names read from data files before they become paths or keys.

Image names in a COLMAP model, a ``manifest.json``, an ``alignment.json`` or a
``transforms.json``, and ids in a Parquet row or an input list, are data: an attacker
controls them. Every command passes them through :func:`check_name` BEFORE any file
operation, so no name such as ``../../victim/v.txt`` can make a write (or a link, or a
read) land outside the folder it belongs to.

A clean name is a relative POSIX path: non-empty, no control characters, no backslash,
not absolute, and no empty, ``.`` or ``..`` segment. Other characters (spaces,
unicode) are kept as they are.
"""
from __future__ import annotations

import unicodedata

SHOWN_CHARS = 80
"""How much of a long name or id an error message shows (:func:`shorten`)."""


class UnsafeNameError(ValueError):
    """A name read from a data file is not a clean relative path; the message names the
    file it came from, the name and the reason."""


def shorten(text: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(text)``, cut to ``limit`` characters with an ellipsis and the full length
    when longer, so a 5,000-character id cannot flood an error message."""
    if not isinstance(text, str):
        return repr(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a clean relative name (see the module doc), or None (pure)."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "it contains control characters"
    if "\\" in name:
        return "it contains a backslash"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        return "it is an absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "it has an empty, '.' or '..' path segment and could escape its folder"
    return None


def check_name(name: object, where: str, what: str = "name") -> str:
    """Return ``name`` if it is a clean relative name, else raise :class:`UnsafeNameError`
    ``"{where}: refusing {what} '...': {reason}"``; ``where`` names the file (and row)
    it came from."""
    problem = name_problem(name)
    if problem:
        raise UnsafeNameError(f"{where}: refusing {what} {shorten(name)}: {problem}")
    return name  # type: ignore[return-value]


__all__ = ["SHOWN_CHARS", "UnsafeNameError", "check_name", "name_problem", "shorten"]
