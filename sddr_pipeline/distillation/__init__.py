"""Self-distillation: coarse-to-fine pseudo-labels G_S of images, and a resumable writer.

The trainer's self-distillation rounds (pseudo-labels of training crops made by the model
being trained) live in ``training.distill``; both run the one window procedure of
``inference.two_stage``.
"""
from .pseudolabels import (
    LabelWriter,
    PseudoLabel,
    PseudoLabelRun,
    __all__,
    cluster_masks,
    make_pseudo_label,
    read_label_files,
    write_label_files,
    write_pseudo_labels,
)
