"""Shared fixtures: where the real sample data lives, and how tests that need it behave.

Tests read ``../shared/data`` (override with ``SDDR_SHARED_DATA``). Without it they skip
with a clear reason, except under CI (``CI=true``) where a missing folder is a failure.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SDDR_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        reason = f"real sample data not found at {path} (set SDDR_SHARED_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; under CI this data must be present")
        pytest.skip(reason)
    return path


@pytest.fixture
def hang_guard(request):
    """Fail a test that runs past its module's ``HANG_GUARD_S`` seconds (default 300)
    instead of hanging the suite; modules opt in with an autouse fixture or usefixtures."""
    seconds = int(getattr(request.module, "HANG_GUARD_S", 300))

    def expire(signum, frame):
        raise TimeoutError(f"test ran past {seconds} s (hang guard)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real RGB + ground-truth samples."""
    return _require(SHARED_DATA)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
