"""Refiner: the stateful wrapper around :class:`SDDRNet` that the pipeline, CLI and trainer use.

Weights are only ever read from safetensors (never pickle): a folder holding
``config.json`` + ``model.safetensors`` (what :meth:`Refiner.save_pretrained` and
``sddr train`` write), or one ``.safetensors`` file whose metadata carries the config
JSON under ``"sddr_config"``. There is no randomly initialised default model.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..io.atomic import atomic_path, atomic_write_bytes
from ..io.hashing import sha256_files
from .config import PRESETS, RefinerConfig
from .network import RefinerOutput, SDDRNet

#: The bundled default weights (config.json + model.safetensors + MODEL_CARD.md).
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights" / "default"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METADATA_KEY = "sddr_config"

_NO_DEFAULT = (
    "the bundled default weights are missing from this installation ({path}); reinstall "
    "sddr-pipeline, or pass --weights PATH (a folder with config.json + model.safetensors "
    "written by `sddr train` or `Refiner.save_pretrained`)"
)


class RefinerWeightsError(FileNotFoundError):
    """Refiner weights that were asked for do not exist (including the unbundled default)."""


def _load_state(path: Path, net: SDDRNet) -> None:
    """Load a safetensors file into ``net``, with errors that name the file."""
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched[:5]}{' ...' if len(mismatched) > 5 else ''}")
    if problems:
        raise ValueError(f"{path}: weights do not match the config: " + "; ".join(problems))
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise ValueError(f"{path}: weights hold NaN or inf values (in {nonfinite[:5]}{' ...' if len(nonfinite) > 5 else ''}); "
                         "they would give non-finite depth for every image")
    net.load_state_dict(state, strict=True)


class Refiner:
    """A refinement network with its config, device, dtype and a version for manifests.

    Call it as ``refiner(low, high)`` with Bx1xHxW (or HxW) tensors in [0, 1]; HxW inputs
    give HxW outputs (KxHxW for the gated head's weights and candidates). Outside training the call runs under ``torch.inference_mode``.
    On construction the network is put in channels_last memory format, which is several
    times faster for oneDNN (CPU) convolutions and changes no result. It starts in eval
    mode; training code calls ``.train()`` (or uses ``.net`` directly).
    """

    def __init__(self, net: SDDRNet, config: RefinerConfig, *, weights_sha256: str | None = None,
                 channels_last: bool = True) -> None:
        if net.config != config:
            raise ValueError("the network was built from a different config than the one given")
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.config = config
        self._weights_sha256 = weights_sha256
        self.net.eval()

    @classmethod
    def from_config(cls, config: RefinerConfig | str, seed: int = 0) -> "Refiner":
        """Randomly initialised refiner (for training only), seeded without touching the global RNG."""
        if isinstance(config, str):
            if config not in PRESETS:
                raise ValueError(f"unknown refiner preset {config!r}; choose one of {sorted(PRESETS)}")
            config = PRESETS[config]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = SDDRNet(config)
        return cls(net, config)

    def with_config(self, **changes: Any) -> "Refiner":
        """A refiner with ``config.replace(**changes)`` and these weights: for settings that
        change no parameter's shape (``head_scale``, ``fusion_median``, ``range_clamp``,
        ``max_side``), to score a trained network under another setting. A change of
        shape is a ``ValueError`` naming the parameters."""
        config = self.config.replace(**changes)
        with torch.random.fork_rng(devices=[]):
            net = SDDRNet(config)
        old, new = self.net.state_dict(), net.state_dict()
        changed = sorted(set(old) ^ set(new)) + sorted(k for k in set(old) & set(new) if old[k].shape != new[k].shape)
        if changed:
            raise ValueError(f"config changes {changes} change the parameters {changed[:5]}")
        net.load_state_dict(old, strict=True)
        return Refiner(net, config).to(next(self.net.parameters()).device)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "Refiner":
        """Load a folder (config.json + model.safetensors) or a single .safetensors file.

        ``"default"`` means the bundled ``sddr-small`` weights (see their MODEL_CARD.md);
        if they are missing it raises :class:`RefinerWeightsError`. Weights saved in fp16
        load into an fp32 model unless ``dtype`` says otherwise.
        """
        if str(name_or_path) == "default":
            path = DEFAULT_WEIGHTS_DIR
            if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
                raise RefinerWeightsError(_NO_DEFAULT.format(path=path))
        else:
            path = Path(name_or_path).expanduser()
        if not path.exists():
            hint = (f" ({str(name_or_path)!r} is an architecture preset, not weights; "
                    "Refiner.from_config builds it untrained for training)") if str(name_or_path) in PRESETS else ""
            raise RefinerWeightsError(f"refiner weights not found: {path}{hint}")
        if path.is_dir():
            config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
            if not weights_file.is_file():
                others = sorted(p.name for p in path.iterdir() if p.suffix in {".pt", ".pth", ".bin", ".ckpt"})
                extra = f"; found {others}, but only safetensors are loaded" if others else ""
                raise RefinerWeightsError(f"{weights_file} not found{extra}")
            if not config_file.is_file():
                raise RefinerWeightsError(f"{config_file} not found (it must sit next to {WEIGHTS_NAME})")
            try:
                config = RefinerConfig.from_json(config_file.read_text())
            except ValueError as exc:
                raise ValueError(f"{config_file}: {exc}") from None
        else:
            weights_file = path
            if path.suffix != ".safetensors":
                raise ValueError(
                    f"{path}: refusing to load; only .safetensors weights are supported "
                    "(pickle-based files such as .pt/.pth/.bin can run arbitrary code)"
                )
            config = cls._config_from_metadata(path)
        net = SDDRNet(config)
        _load_state(weights_file, net)
        refiner = cls(net, config, weights_sha256=sha256_files(weights_file))
        return refiner.to(device, dtype or torch.float32)

    @staticmethod
    def _config_from_metadata(path: Path) -> RefinerConfig:
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
        if METADATA_KEY not in metadata:
            raise ValueError(
                f"{path}: no {METADATA_KEY!r} entry in the safetensors metadata; "
                f"use a folder with {CONFIG_NAME} + {WEIGHTS_NAME} instead"
            )
        try:
            return RefinerConfig.from_json(metadata[METADATA_KEY])
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def save_pretrained(self, folder: str | os.PathLike[str], dtype: torch.dtype | None = torch.float16) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (config also in its metadata), each
        atomically; ``dtype=None`` keeps the model's dtype. Returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.detach().to("cpu", dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu())
            .contiguous()
            for k, v in self.net.state_dict().items()
        }
        config_json = self.config.to_json()
        weights_file = folder / WEIGHTS_NAME
        with atomic_path(weights_file) as tmp:
            save_file(state, tmp, metadata={METADATA_KEY: config_json})
        atomic_write_bytes(folder / CONFIG_NAME, (config_json + "\n").encode())
        self._weights_sha256 = sha256_files(weights_file)
        return folder

    @property
    def version(self) -> str:
        """``<preset>@<sha256[:12]>`` of the weights file last loaded or saved; for weights never
        saved, ``<preset>@mem-<sha256[:12]>`` of the current parameters."""
        if self._weights_sha256 is not None:
            return f"{self.config.name}@{self._weights_sha256[:12]}"
        digest = hashlib.sha256()
        for key, value in sorted(self.net.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        return f"{self.config.name}@mem-{digest.hexdigest()[:12]}"

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Refiner":
        self.net.to(device=device, dtype=dtype)
        return self

    def train(self, mode: bool = True) -> "Refiner":
        self.net.train(mode)
        return self

    def eval(self) -> "Refiner":
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def __call__(self, low: torch.Tensor, high: torch.Tensor, max_side: int | None = None) -> RefinerOutput:
        for name, value in (("low", low), ("high", high)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.ndim not in (2, 4) or (value.ndim == 4 and value.shape[1] != 1):
                raise ValueError(f"{name} must be Bx1xHxW or HxW, got shape {tuple(value.shape)}")
        if low.shape != high.shape:
            raise ValueError(f"low {tuple(low.shape)} and high {tuple(high.shape)} must have the same shape")
        squeeze = low.ndim == 2
        if squeeze:
            low, high = low[None, None], high[None, None]
        low = low.to(self.device, self.dtype)
        high = high.to(self.device, self.dtype)
        if self.net.training:
            out = self.net(low, high, max_side)
        else:
            with torch.inference_mode():
                out = self.net(low, high, max_side)
        if squeeze:
            out = RefinerOutput(*(None if t is None else t[0] if t.shape[1] > 1 else t[0, 0] for t in out))
        return out

    def __repr__(self) -> str:
        return (f"Refiner({self.version}, {self.num_parameters() / 1e6:.2f}M params, "
                f"device={self.device}, dtype={self.dtype})")
