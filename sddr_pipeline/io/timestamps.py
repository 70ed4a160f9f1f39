"""The one timestamp format written into manifests and lock files."""
from __future__ import annotations

import datetime as _dt


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (``2025-01-31T12:00:00+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
