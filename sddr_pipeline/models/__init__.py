"""The SDDR refinement model: configuration, network and the stateful :class:`Refiner` wrapper."""
from __future__ import annotations

from .config import PRESETS, RefinerConfig
from .network import RefinerOutput, SDDRNet

__all__ = ["PRESETS", "RefinerConfig", "RefinerOutput", "SDDRNet"]
