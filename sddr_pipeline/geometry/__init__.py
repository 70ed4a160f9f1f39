"""3-D geometry from refined depth: intrinsics, point clouds, TSDF fusion.

Importing this package imports numpy only; Open3D is loaded by the functions that need it
(PLY files, downsampling, normals, TSDF, rendering).
"""
from .intrinsics import (
    Intrinsics,
    IntrinsicsError,
    intrinsics_from_colmap,
    intrinsics_from_sample,
    load_intrinsics,
    parse_intrinsics,
)
from .pointcloud import (
    PointCloud,
    RelativeDepthError,
    backproject,
    depth_to_pointcloud,
    estimate_normals,
    merge_clouds,
    metric_depth,
    nearest_distances,
    pointcloud_from_output,
    rasterize_points,
    read_ply,
    render_views,
    transform_points,
    voxel_downsample,
    voxel_keys,
    write_mesh_ply,
    write_ply,
)
from .tsdf import Frame, compare_surfaces, evaluate_rgbd_fusion, fuse_from_output, fuse_tsdf, point_to_surface

__all__ = [
    "Frame",
    "Intrinsics",
    "IntrinsicsError",
    "PointCloud",
    "RelativeDepthError",
    "backproject",
    "compare_surfaces",
    "depth_to_pointcloud",
    "estimate_normals",
    "evaluate_rgbd_fusion",
    "fuse_from_output",
    "fuse_tsdf",
    "intrinsics_from_colmap",
    "intrinsics_from_sample",
    "load_intrinsics",
    "merge_clouds",
    "metric_depth",
    "nearest_distances",
    "parse_intrinsics",
    "point_to_surface",
    "pointcloud_from_output",
    "rasterize_points",
    "read_ply",
    "render_views",
    "transform_points",
    "voxel_downsample",
    "voxel_keys",
    "write_mesh_ply",
    "write_ply",
]
