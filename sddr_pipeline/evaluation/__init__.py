"""Evaluation: the METRICS.md metrics, fusion baselines, a dataset runner and an HTML report."""
from .baselines import freq_merge, guided_fusion
from .metrics import METRIC_KEYS, GroundTruth, evaluate_prediction, prepare_ground_truth
from .runner import METHODS, evaluate_dataset, format_table

__all__ = [
    "METHODS",
    "METRIC_KEYS",
    "GroundTruth",
    "evaluate_dataset",
    "evaluate_prediction",
    "format_table",
    "freq_merge",
    "guided_fusion",
    "prepare_ground_truth",
]
