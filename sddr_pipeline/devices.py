"""Device choice, in one place: what ``auto``, ``cpu``, ``cuda[:N]`` and ``mps`` mean for the
CLI, the integrations, the trainer and the Ray stage.

torch is imported inside :func:`resolve_device` only, so importing this module stays cheap.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """A requested device is unknown, or torch cannot use it in this process."""


def resolve_device(name: str = "auto") -> str:
    """The torch device string to run on for the requested ``name``.

    ``auto`` is ``cuda`` when torch can use a CUDA device, else ``cpu``; it warns when a GPU
    was assigned (``CUDA_VISIBLE_DEVICES``, as Ray does) that torch cannot use. ``cpu`` is
    always usable; ``cuda``, ``cuda:N`` and ``mps`` without such a device raise
    :class:`DeviceError` instead of falling back, so a run never silently lands on the CPU.
    """
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if visible:
            log.warning("a GPU was assigned (CUDA_VISIBLE_DEVICES=%s) but torch finds no CUDA device; running on CPU", visible)
        return "cpu"
    kind, colon, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (colon and not index.isdigit()):
        raise DeviceError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was requested but torch finds no CUDA device (CUDA_VISIBLE_DEVICES={visible!r})")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} was requested but torch sees {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r} was requested but torch finds no MPS device")
    return name


__all__ = ["DeviceError", "resolve_device"]
