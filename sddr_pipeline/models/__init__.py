"""The SDDR refinement model N_r: configuration, network, guided upsampling and the
stateful :class:`Refiner` wrapper (safetensors-only loading)."""
from __future__ import annotations

from .config import PRESETS, RefinerConfig
from .network import RefinerOutput, SDDRNet
from .refiner import Refiner, RefinerWeightsError

__all__ = ["PRESETS", "Refiner", "RefinerConfig", "RefinerOutput", "RefinerWeightsError", "SDDRNet"]
