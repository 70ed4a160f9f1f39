"""SDDR training: losses, training examples through any predictor, YAML configs, and a
resumable trainer. ``train(load_config("recipe.yaml"))`` returns the final weights folder."""
from __future__ import annotations

from .config import ConfigError, DistillSettings, Stage, TrainConfig, ValidationSettings, load_config, parse_override, recipe_path
from .losses import (
    LossWeights,
    cluster_boxes,
    edge_clusters,
    edge_guided_gradient_loss,
    fusion_loss,
    gradient_matching,
    high_frequency_regions,
    kmeans,
    loss_gt,
    ssi_normalize,
    ssi_trimmed_mae,
    total_loss,
)
from .samples import ExampleSettings, ExampleSource, NoiseRanges, SourceSpec, TrainingExample, make_example
from .shard_source import ShardSourceError, TrainingShards
from .trainer import evaluate, learning_rate, train

__all__ = [
    "ConfigError",
    "DistillSettings",
    "ExampleSettings",
    "ExampleSource",
    "LossWeights",
    "NoiseRanges",
    "SourceSpec",
    "ShardSourceError",
    "Stage",
    "TrainConfig",
    "TrainingExample",
    "TrainingShards",
    "ValidationSettings",
    "cluster_boxes",
    "edge_clusters",
    "edge_guided_gradient_loss",
    "evaluate",
    "fusion_loss",
    "gradient_matching",
    "high_frequency_regions",
    "kmeans",
    "learning_rate",
    "load_config",
    "loss_gt",
    "make_example",
    "parse_override",
    "recipe_path",
    "ssi_normalize",
    "ssi_trimmed_mae",
    "total_loss",
    "train",
]
