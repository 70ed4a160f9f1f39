"""YAML reading with YAML 1.2 numbers: ``1e-3`` is a float, as a user writing it means.

PyYAML follows YAML 1.1, whose float pattern needs a dot (``1.0e-3``), so ``lr: 1e-3``
or ``--set lr=1e-3`` would arrive as the string ``"1e-3"`` and be refused.
"""
from __future__ import annotations

import re
from typing import Any

import yaml


class NumberLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads dot-less exponent numbers (``1e-3``, ``2E5``) as floats."""


NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with :class:`NumberLoader`; raises ``yaml.YAMLError`` on bad YAML."""
    return yaml.load(text, Loader=NumberLoader)  # noqa: S506 - NumberLoader is a SafeLoader
