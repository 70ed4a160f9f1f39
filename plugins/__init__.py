"""Integrations (COLMAP, NeRF/3DGS export, point clouds, a sample capture builder), installed as ``sddr_pipeline.plugins``.

Each integration registers itself in :data:`sddr_pipeline.registry.INTEGRATIONS` as a
``"module:function"`` string, so nothing heavy (open3d, pycolmap) is imported until it is
used; third parties add theirs through the ``sddr_pipeline.integrations`` entry-point
group. :func:`add_arguments` adds every built-in integration's ``sddr`` sub-command.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from sddr_pipeline.registry import INTEGRATIONS

BUILTIN: dict[str, str] = {
    "pointcloud": "sddr_pipeline.geometry.pointcloud:pointcloud_from_output",
    "fuse": "sddr_pipeline.geometry.tsdf:fuse_from_output",
    "colmap": "sddr_pipeline.plugins.colmap:run_colmap",
    "nerf": "sddr_pipeline.plugins.nerf:export_nerf",
    "capture-sample": "sddr_pipeline.plugins.capture:build_capture",
}
"""Integration name -> the Python function behind it."""

CLI_MODULES: tuple[str, ...] = (
    "sddr_pipeline.plugins.pointcloud",
    "sddr_pipeline.plugins.colmap",
    "sddr_pipeline.plugins.nerf",
    "sddr_pipeline.plugins.capture",
)
"""Modules whose ``add_arguments(subparsers)`` adds ``sddr`` sub-commands."""

for _name, _target in BUILTIN.items():
    if _name not in INTEGRATIONS:
        INTEGRATIONS.register(_name, _target)


def add_arguments(subparsers: Any) -> None:
    """Add ``sddr pointcloud``, ``fuse``, ``colmap``, ``nerf`` and ``capture-sample`` to an argparse
    sub-parser set; each sets ``func`` to its entry point (``func(args) -> int``)."""
    for module in CLI_MODULES:
        import_module(module).add_arguments(subparsers)


__all__ = ["BUILTIN", "CLI_MODULES", "add_arguments"]
