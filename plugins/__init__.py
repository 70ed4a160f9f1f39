"""Integrations (COLMAP, NeRF/3DGS export, point clouds, a sample capture builder), installed as ``sddr_pipeline.plugins``.

Importing this package registers the built-in :class:`IntegrationSpec` objects in
:data:`sddr_pipeline.registry.INTEGRATIONS`, which does that on its first lookup, so the
built-ins work even where the installed package metadata (and its entry points) is stale.
The same specs are declared in ``pyproject.toml`` under the ``sddr_pipeline.integrations``
entry-point group, through which third parties add theirs. Each spec names its argument
adder as a ``"module:function"`` string: nothing heavy (open3d, pycolmap) is imported until
its sub-command is used. :func:`add_arguments` adds every registered integration's ``sddr``
sub-command to an argparse sub-parser set.
"""
from __future__ import annotations

from sddr_pipeline.integrations import IntegrationSpec, add_arguments
from sddr_pipeline.registry import INTEGRATIONS

POINTCLOUD = IntegrationSpec(
    "pointcloud", "back-project metric refined depth to a coloured PLY point cloud",
    "sddr_pipeline.plugins.pointcloud:add_pointcloud_arguments",
)
FUSE = IntegrationSpec(
    "fuse", "TSDF-fuse metric refined depth with camera poses into a mesh (Open3D)",
    "sddr_pipeline.plugins.pointcloud:add_fuse_arguments",
)
COLMAP = IntegrationSpec(
    "colmap", "SDDR depth for a COLMAP workspace, scaled to its SfM points (COLMAP/3DGS outputs)",
    "sddr_pipeline.plugins.colmap:add_arguments",
)
NERF = IntegrationSpec(
    "nerf", "write depth supervision for nerfstudio, instant-ngp or 3DGS from refined depth",
    "sddr_pipeline.plugins.nerf:add_arguments",
)
CAPTURE_SAMPLE = IntegrationSpec(
    "capture-sample",
    "build a capture folder (COLMAP sparse/0, transforms.json, images, exact depth) from an RGB-D sequence",
    "sddr_pipeline.plugins.capture:add_arguments",
)
BUILTIN: tuple[IntegrationSpec, ...] = (POINTCLOUD, FUSE, COLMAP, NERF, CAPTURE_SAMPLE)
"""The built-in integrations, in the order ``sddr --help`` lists them."""

for _spec in BUILTIN:
    INTEGRATIONS.register(_spec.name, _spec)

__all__ = ["BUILTIN", "CAPTURE_SAMPLE", "COLMAP", "FUSE", "NERF", "POINTCLOUD", "add_arguments"]
