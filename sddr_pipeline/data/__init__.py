"""Data layer: image/depth readers, dataset layouts and a synthetic RGB-D scene generator."""
from .datasets import Dataset, DatasetError, Sample, open_dataset
from .images import IMAGE_EXTENSIONS, ImageReadError, read_depth_png16, read_image, read_pfm, write_pfm
from .synthetic import SyntheticScene, make_scene, write_synthetic_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "DatasetError",
    "ImageReadError",
    "Sample",
    "SyntheticScene",
    "make_scene",
    "open_dataset",
    "read_depth_png16",
    "read_image",
    "read_pfm",
    "write_pfm",
    "write_synthetic_dataset",
]
