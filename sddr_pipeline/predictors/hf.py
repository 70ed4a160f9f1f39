"""``hf:<model id or local folder>``: any Hugging Face transformers depth-estimation model.

Depth Anything V1/V2, DPT / MiDaS, ZoeDepth, GLPN, ... are loaded with
``AutoModelForDepthEstimation``; ``AutoImageProcessor`` only supplies the normalisation
(``image_mean`` / ``image_std`` / rescale factor). The processor's fixed input size is
NOT used: the requested working resolution decides it, so a call at 384 and one at 1024
really differ. The image is resized (PIL bicubic, like the processors) so that its long
side is the resolution, aspect kept, each side rounded to the model's patch multiple:
the backbone's (else the model's) ``patch_size`` (14 for DINOv2 / Depth Anything, 16 for
ViT/BEiT), raised to the processor's ``ensure_multiple_of`` / ``size_divisor`` when that
is a multiple of it (32 for MiDaS-hybrid, ZoeDepth, GLPN); 32 when nothing says. The
output is that rounded size. Plain-ViT and hybrid DPT checkpoints (e.g. ``Intel/dpt-large``)
only accept square inputs in transformers: they run on a square of side ~resolution and
their output is resized to the aspect-kept working size (``working_size(h, w, r)``).

Output kind: metric depth for ZoeDepth, GLPN, DepthPro and checkpoints whose config says
``depth_estimation_type == "metric"`` (Depth Anything metric); relative disparity
otherwise. Options: ``kind=depth|disparity``, ``metric=true|false`` override that;
``dtype=fp32|fp16|bf16`` sets the compute precision; half precision is CUDA-only, and on
any other device it falls back to fp32 with a warning. Outputs are always float32.

Local folders load offline. Hub ids are looked up in the local Hugging Face cache first
and downloaded otherwise; without network access that fails with a message saying so.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..registry import PREDICTORS
from .base import (
    OutputKind,
    PredictorError,
    PredictorSpec,
    working_size,
)
from .common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SameShapeBatchPredictor,
    check_options,
    file_digest,
    maps_to_size,
    resize_image,
    to_tensor,
)

OPTIONS = frozenset({"dtype", "kind", "metric"})
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
METRIC_MODEL_TYPES = frozenset({"zoedepth", "glpn", "depth_pro"})


def _source(arg: str | None) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether it is a local folder)."""
    if not arg:
        raise PredictorError("hf needs a model id or a folder, e.g. hf:depth-anything/Depth-Anything-V2-Small-hf")
    path = Path(arg).expanduser()
    looks_local = arg.startswith(("/", ".", "~")) or path.exists()
    if not looks_local:
        return arg, False
    if not path.is_dir():
        raise PredictorError(f"hf: model folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise PredictorError(f"hf: {path} is not a Hugging Face model folder (no config.json)")
    return str(path), True


def _load_config(source: str, local: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except Exception as exc:
        if local:
            raise PredictorError(f"hf: cannot read the model config in {source}: {exc}") from exc
    try:
        return AutoConfig.from_pretrained(source)
    except Exception as exc:
        raise PredictorError(
            f"hf: {source!r} is not a local folder, not in the Hugging Face cache, and could not be "
            f"fetched from the Hugging Face Hub (is this machine offline? download it where the hub "
            f"is reachable and pass the folder as hf:/path/to/folder): {exc}"
        ) from exc


def _load_processor(source: str) -> Any | None:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source)
    except Exception:
        return None


def patch_multiple(config: Any, processor: Any | None) -> int:
    """The multiple each input side is rounded to (see the module docstring)."""
    base = 32
    for holder in (getattr(config, "backbone_config", None), config):
        size = getattr(holder, "patch_size", None) if holder is not None else None
        if size:
            base = int(size[0] if isinstance(size, (list, tuple)) else size)
            break
    for key in ("ensure_multiple_of", "size_divisor"):
        value = getattr(processor, key, None)
        if isinstance(value, int) and value > base and value % base == 0:
            return value
    return base


def default_kind(config: Any) -> OutputKind:
    if getattr(config, "depth_estimation_type", None) == "metric" or config.model_type in METRIC_MODEL_TYPES:
        return OutputKind("depth", metric=True)
    return OutputKind("disparity", metric=False)


def _weights_version(config: Any, source: str, local: bool) -> str | None:
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)[:12]
    if local:
        folder = Path(source)
        weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        if weights:
            return file_digest(*weights)
    return None


class HFDepthPredictor(SameShapeBatchPredictor):
    """A transformers depth model run at any working resolution."""

    def __init__(self, arg: str | None, device: str, options: dict[str, str]) -> None:
        check_options(options, OPTIONS, "hf")
        dtype_name = options.get("dtype", "fp32")
        if dtype_name not in DTYPES:
            raise PredictorError(f"hf: option dtype={dtype_name!r} must be one of {', '.join(DTYPES)}")
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype_name]
        if self.dtype != torch.float32 and self.device.type != "cuda":
            warnings.warn(f"hf: dtype={dtype_name} needs CUDA; running in fp32 on {device}", stacklevel=2)
            self.dtype = torch.float32
        OutputKind.from_options(options)  # reject bad kind/metric values before the slow load

        source, local = _source(arg)
        config = _load_config(source, local)
        from transformers import AutoModelForDepthEstimation

        try:
            model = AutoModelForDepthEstimation.from_pretrained(source, config=config)
        except ValueError as exc:
            raise PredictorError(
                f"hf: {source} is a {config.model_type!r} model, not a depth-estimation model: {exc}"
            ) from exc
        except Exception as exc:
            raise PredictorError(f"hf: cannot load the weights of {source}: {exc}") from exc
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        processor = _load_processor(source)
        if processor is None:
            warnings.warn(f"hf: {source} has no image processor config; using ImageNet mean/std", stacklevel=2)
        rescale = getattr(processor, "do_rescale", True)
        normalize = getattr(processor, "do_normalize", True)
        self.scale = float(getattr(processor, "rescale_factor", 1 / 255)) if rescale else 1.0
        self.mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN) if normalize else (0.0, 0.0, 0.0)
        self.std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD) if normalize else (1.0, 1.0, 1.0)
        self.multiple = patch_multiple(config, processor)
        self.square = config.model_type == "dpt" and (
            getattr(config, "backbone_config", None) is None or getattr(config, "is_hybrid", False)
        )
        self.kind = OutputKind.from_options(options, default_kind(config))
        version = _weights_version(config, source, local)
        self.name = f"hf:{arg}" + (f"@{version}" if version else "")

    def input_size(self, height: int, width: int, resolution: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(model input size, output working size) for an image of ``height`` x ``width``."""
        if self.square:
            side = working_size(resolution, resolution, resolution, self.multiple)
            return side, working_size(height, width, resolution)
        size = working_size(height, width, resolution, self.multiple)
        return size, size

    def predict_same_shape(self, images: list[np.ndarray], resolution: int) -> list[np.ndarray]:
        h, w = images[0].shape[:2]
        in_size, out_size = self.input_size(h, w, resolution)
        resized = [resize_image(image, in_size, Image.BICUBIC) for image in images]
        batch = to_tensor(resized, self.mean, self.std, self.scale).to(self.device, self.dtype)
        with torch.inference_mode():
            pred = self.model(pixel_values=batch).predicted_depth
        return maps_to_size(pred.float(), out_size, self.name)


@PREDICTORS.register("hf")
def from_spec(spec: PredictorSpec, device: str) -> HFDepthPredictor:
    return HFDepthPredictor(spec.arg, device, spec.options)
