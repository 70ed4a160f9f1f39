"""Files on disk: atomic writes, depth maps (.npy / 16-bit PNG / previews), manifests."""
from .atomic import atomic_path, atomic_write, atomic_write_bytes, atomic_write_json, remove_temporaries
from .depth_files import DepthMap, colorize, load_depth, read_manifest, read_png16, save_npy, save_png16, save_preview
from .names import UnsafeNameError, check_name, shorten

__all__ = [
    "DepthMap",
    "UnsafeNameError",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_name",
    "colorize",
    "load_depth",
    "read_manifest",
    "read_png16",
    "remove_temporaries",
    "save_npy",
    "save_png16",
    "save_preview",
    "shorten",
]
