"""Files on disk: atomic writes, depth maps (.npy / 16-bit PNG / previews), manifests."""
from .atomic import atomic_write, atomic_write_bytes, atomic_write_json, remove_temporaries
from .depth_files import DepthMap, colorize, load_depth, read_png16, save_npy, save_png16, save_preview

__all__ = [
    "DepthMap",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "colorize",
    "load_depth",
    "read_png16",
    "remove_temporaries",
    "save_npy",
    "save_png16",
    "save_preview",
]
