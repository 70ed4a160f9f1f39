"""Training configuration: a :class:`TrainConfig` loaded from YAML and validated.

Every error names the offending key (``loss.grad``, ``data[1].root``, ...). Relative paths
(``output``, dataset ``root``) are resolved against the current working directory; a data
``root`` may use environment variables, ``$VAR``/``${VAR}`` or ``${VAR:-default}``. A
``shards`` root may also be a URI (``file://``, ``s3://``, ...), kept as written; its
``storage_options`` (fsspec, e.g. ``{client_kwargs: {endpoint_url: ...}}``) may use
environment variables in their string values and are never recorded (:meth:`TrainConfig.to_dict`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..inference.options import check_range_clamp
from ..io.mappings import check_keys, field_names
from ..io.yaml_numbers import load_yaml
from ..models import PRESETS
from ..predictors import PredictorError, PredictorSpec
from .losses import LossWeights
from .samples import SOURCE_KINDS, ExampleSettings, NoiseRanges, SourceSpec, is_simulated
from .shard_source import PREDICTION_SPACES, is_uri

#: Training stage kinds. ``gt``: L_gt only (paper's first epoch). ``distill``: one
#: self-distillation round: pseudo-labels G_S regenerated from the current model at its
#: start, then L_gt + grad * L_grad + fusion * L_fusion (see ``training.distill``).
STAGE_KINDS: tuple[str, ...] = ("gt", "distill")
#: Keys that may change between an interrupted run and its resumption. ``stages`` and
#: ``loss`` change what the remaining steps optimise (a branch of the run that keeps its
#: optimizer state and schedule, e.g. a control without distillation, or a new loss term);
#: the checkpoints record the settings each was made with.
RESUMABLE_CHANGES = frozenset({
    "steps", "stages", "loss", "ema", "checkpoint_every", "keep_checkpoints", "validate_every", "validation",
    "output", "device", "threads", "data_workers",
})


class ConfigError(ValueError):
    """A training config is invalid; the message names the key."""


@dataclass(frozen=True)
class Stage:
    """A block of ``steps`` optimisation steps with one loss recipe (``kind``).

    ``relabel_shards`` (``distill`` only): the round's teacher makes new pseudo-labels for
    training-shard examples too, instead of using the G_S stored in the shards.
    """

    kind: str = "gt"
    steps: int = 1
    relabel_shards: bool = False


@dataclass(frozen=True)
class DistillSettings:
    """Self-distillation rounds (each ``distill`` stage is one round).

    ``pool``: how many examples the round labels with the model of its first step (None:
    the round's steps x batch size, so each is used once; fewer are cycled through, more
    are never reached). ``coarse_to_fine_steps``: the S of G_S; ``top``/``regions``: the
    share of G_S binarised as edges and the number of k-means regions of L_grad (<= 127).
    ``range_clamp``: the two-stage windows' local-range clamp while making G_S (see
    :mod:`sddr_pipeline.inference.range_clamp`); 0, the default, is what the bundled
    weights were trained with (the clamp came later), so the default recipe reproduces them.
    """

    pool: int | None = None
    coarse_to_fine_steps: int = 2
    top: float = 0.05
    regions: int = 8
    range_clamp: float = 0.0

    def __post_init__(self) -> None:
        if self.pool is not None and (isinstance(self.pool, bool) or not isinstance(self.pool, int) or self.pool < 1):
            raise ValueError(f"distill.pool must be an integer >= 1 or null, got {self.pool!r}")
        steps = self.coarse_to_fine_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 5:
            raise ValueError(f"distill.coarse_to_fine_steps must be an integer in [1, 5], got {steps!r}")
        if isinstance(self.top, bool) or not isinstance(self.top, (int, float)) or not 0.0 < self.top < 1.0:
            raise ValueError(f"distill.top must be in (0, 1), got {self.top!r}")
        if isinstance(self.regions, bool) or not isinstance(self.regions, int) or not 1 <= self.regions <= 127:
            raise ValueError(f"distill.regions must be an integer in [1, 127], got {self.regions!r}")
        if isinstance(self.range_clamp, bool) or not isinstance(self.range_clamp, (int, float)):
            raise ValueError(f"distill.range_clamp must be a number, got {self.range_clamp!r}")
        try:
            check_range_clamp(self.range_clamp)
        except ValueError as exc:
            raise ValueError(f"distill.{exc}") from None


@dataclass(frozen=True)
class ValidationSettings:
    """Held-out synthetic scenes (never trained on) scored every ``validate_every`` steps."""

    scenes: int = 4
    size: tuple[int, int] = (256, 320)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; see ``recipes/quick.yaml`` for an annotated example.

    ``init``: weights to start from instead of a seeded random init (``"default"`` or a
    weights folder/file of the same ``preset`` architecture), for fine-tuning.
    ``ema``: decay of an exponential moving average of the weights (0 = none), updated
    after every step; when set, validation, ``final`` and :func:`refiner_from_checkpoint`
    use the average (steadier than single checkpoints of a noisy run). It may be turned on
    when a run resumes: the average then starts from the resumed weights.
    ``data_workers``: processes that make stage-``gt`` batches ahead of the training step
    (0 = in the training process). Examples are a pure function of (seed, index), so the
    weights do not depend on it; it may change when a run is resumed.
    """

    steps: int
    preset: str = "sddr-small"
    seed: int = 0
    batch_size: int = 4
    crop: int = 256
    crop_scale: tuple[float, float] = (0.75, 1.0)
    flip: bool = True
    lr: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.0
    loss: LossWeights = LossWeights()
    data: tuple[SourceSpec, ...] = (SourceSpec(),)
    predictor: str = "simulated"
    noise: NoiseRanges = NoiseRanges()
    low_res: int = 384
    high_res: int = 1024
    stages: tuple[Stage, ...] = ()
    distill: DistillSettings = DistillSettings()
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    validate_every: int = 100
    validation: ValidationSettings = ValidationSettings()
    output: str = "runs/sddr"
    device: str = "auto"
    bf16: bool = False
    threads: int | None = None
    data_workers: int = 0
    init: str | None = None

    @property
    def examples(self) -> ExampleSettings:
        return ExampleSettings(
            predictor=self.predictor, low_res=self.low_res, high_res=self.high_res, crop=self.crop,
            crop_scale=self.crop_scale, flip=self.flip, noise=self.noise, seed=self.seed,
        )

    @property
    def output_dir(self) -> Path:
        return Path(self.output).expanduser().resolve()

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready dict (tuples become lists); :func:`config_from_dict` inverts it.

        What checkpoints record and a resume compares: data sources' ``storage_options``
        are left out (connection settings, possibly credentials), and keys added for
        training shards appear only where used, so older checkpoints still compare equal.
        """
        out = _plain(dataclasses.asdict(self))
        for src in out["data"]:
            src.pop("storage_options", None)
            if src["kind"] != "shards":
                src.pop("prediction_space", None)
        for stage in out["stages"]:
            if not stage.get("relabel_shards"):
                stage.pop("relabel_shards", None)
        if out.get("init") is None:
            out.pop("init", None)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        return config_from_dict(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------- validation


def _int(value: Any, key: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(f"{key} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key} must be <= {hi}, got {value}")
    return value


def _float(value: Any, key: str, lo: float | None = None, hi: float | None = None, open_lo: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    value = float(value)
    if lo is not None and (value < lo or (open_lo and value == lo)):
        raise ConfigError(f"{key} must be {'>' if open_lo else '>='} {lo:g}, got {value:g}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key} must be <= {hi:g}, got {value:g}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _pair(value: Any, key: str, kind: type = float) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{key} must be a [first, second] pair, got {value!r}")
    conv = _int if kind is int else _float
    return tuple(conv(v, f"{key}[{i}]") for i, v in enumerate(value))


def _mapping(value: Any, key: str, known: set[str] | frozenset[str]) -> dict[str, Any]:
    return check_keys(value, known, what="training config", where=key, error=ConfigError)


_ENV_VAR = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")


def expand_env(text: str, key: str) -> str:
    """Replace ``$VAR``, ``${VAR}`` and ``${VAR:-default}`` in ``text``; an unset variable
    without a default is an error naming ``key``."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        if name in os.environ:
            return os.environ[name]
        if match.group(2) is not None:
            return match.group(2)
        raise ConfigError(f"{key}: environment variable {name} is not set (or write ${{{name}:-default}})")

    return _ENV_VAR.sub(value, text)


def _expand_options(value: Any, key: str) -> Any:
    """``storage_options`` with environment variables expanded in their string values."""
    if isinstance(value, Mapping):
        return {str(k): _expand_options(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_expand_options(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return expand_env(value, key) if isinstance(value, str) else value


def _shards_root(text: str) -> str:
    """A URI stays as written (trailing ``/`` dropped); a path becomes absolute."""
    if is_uri(text):
        return text.rstrip("/") if not text.endswith("://") else text
    return str(Path(text).expanduser().resolve())


def _source(value: Any, key: str) -> SourceSpec:
    d = _mapping(value, key, {"kind", "root", "layout", "weight", "size", "storage_options", "prediction_space"})
    kind = _str(d.get("kind", "synthetic"), f"{key}.kind")
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"{key}.kind must be one of {', '.join(repr(k) for k in SOURCE_KINDS)}, got {kind!r}")
    root = d.get("root")
    if kind == "shards":
        root = _shards_root(expand_env(_str(root, f"{key}.root"), f"{key}.root"))
    elif kind != "synthetic":
        root = str(Path(expand_env(_str(root, f"{key}.root"), f"{key}.root")).expanduser().resolve())
    elif root is not None:
        raise ConfigError(f"{key}.root is only for kinds 'dataset', 'unlabeled' and 'shards'")
    for option in ("storage_options", "prediction_space"):
        if kind != "shards" and d.get(option) is not None:
            raise ConfigError(f"{key}.{option} is only for kind 'shards'")
    if kind == "shards" and d.get("layout", "auto") != "auto":
        raise ConfigError(f"{key}.layout is only for kinds 'dataset' and 'unlabeled'")
    options = d.get("storage_options")
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"{key}.storage_options must be a mapping, got {type(options).__name__}")
    space = _str(d.get("prediction_space") or "auto", f"{key}.prediction_space")
    if space not in PREDICTION_SPACES:
        raise ConfigError(f"{key}.prediction_space must be one of {', '.join(PREDICTION_SPACES)}, got {space!r}")
    size = _pair(d.get("size", [384, 512]), f"{key}.size", int)
    if min(size) < 32:
        raise ConfigError(f"{key}.size must be at least 32x32, got {list(size)}")
    return SourceSpec(
        kind=kind, root=root, layout=_str(d.get("layout", "auto"), f"{key}.layout"),
        weight=_float(d.get("weight", 1.0), f"{key}.weight", 0.0, open_lo=True), size=size,
        storage_options=None if options is None else _expand_options(options, f"{key}.storage_options"),
        prediction_space=space,
    )


def _sub(cls: type, value: Any, key: str) -> Any:
    d = _mapping(value, key, field_names(cls))
    try:
        return cls(**d)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except TypeError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Validate a plain mapping (parsed YAML) into a :class:`TrainConfig`."""
    d = _mapping(data, "", field_names(TrainConfig))
    out: dict[str, Any] = {}
    ints = {
        "seed": (0, None), "batch_size": (1, 1024), "crop": (32, 8192), "warmup_steps": (0, None),
        "checkpoint_every": (1, None), "keep_checkpoints": (1, None), "validate_every": (0, None),
        "low_res": (16, 16384), "high_res": (16, 16384), "data_workers": (0, 64),
    }
    for key, (lo, hi) in ints.items():
        if key in d:
            out[key] = _int(d[key], key, lo, hi)
    if "steps" in d:
        out["steps"] = _int(d["steps"], "steps", 1)
    floats = {"lr": (0.0, 1.0, True), "weight_decay": (0.0, 1.0, False), "grad_clip": (0.0, None, False),
              "min_lr_ratio": (0.0, 1.0, False), "ema": (0.0, 0.99999, False)}
    for key, (lo, hi, open_lo) in floats.items():
        if key in d:
            out[key] = _float(d[key], key, lo, hi, open_lo)
    for key in ("flip", "bf16"):
        if key in d:
            out[key] = _bool(d[key], key)
    if "preset" in d:
        out["preset"] = _str(d["preset"], "preset")
        if out["preset"] not in PRESETS:
            raise ConfigError(f"preset must be one of {sorted(PRESETS)}, got {out['preset']!r}")
    if "lr_schedule" in d:
        out["lr_schedule"] = _str(d["lr_schedule"], "lr_schedule")
        if out["lr_schedule"] not in ("cosine", "constant"):
            raise ConfigError(f"lr_schedule must be 'cosine' or 'constant', got {out['lr_schedule']!r}")
    if "crop_scale" in d:
        cs = _pair(d["crop_scale"], "crop_scale")
        if not 0 < cs[0] <= cs[1]:
            raise ConfigError(f"crop_scale must satisfy 0 < min <= max, got {list(cs)}")
        out["crop_scale"] = cs
    if "loss" in d:
        out["loss"] = _sub(LossWeights, d["loss"], "loss")
    if "noise" in d:
        probabilities = ("clean", "mixed", "sharp_low")
        noise = _mapping(d["noise"], "noise", {"cons", "edge", "texture", *probabilities})
        values = {k: _pair(v, f"noise.{k}") for k, v in noise.items() if k not in probabilities}
        values.update({k: _float(noise[k], f"noise.{k}", 0.0, 1.0) for k in probabilities if k in noise})
        out["noise"] = _sub(NoiseRanges, values, "noise")
    if "distill" in d:
        out["distill"] = _sub(DistillSettings, d["distill"], "distill")
    if "validation" in d:
        v = _mapping(d["validation"], "validation", {"scenes", "size"})
        size = _pair(v.get("size", [256, 320]), "validation.size", int)
        if min(size) < 32:
            raise ConfigError(f"validation.size must be at least 32x32, got {list(size)}")
        out["validation"] = ValidationSettings(scenes=_int(v.get("scenes", 4), "validation.scenes", 1), size=size)
    if "data" in d:
        if not isinstance(d["data"], (list, tuple)) or not d["data"]:
            raise ConfigError("data must be a non-empty list of sources")
        out["data"] = tuple(_source(s, f"data[{i}]") for i, s in enumerate(d["data"]))
    if "predictor" in d:
        out["predictor"] = _str(d["predictor"], "predictor")
        try:
            PredictorSpec.parse(out["predictor"])
        except PredictorError as exc:
            raise ConfigError(f"predictor: {exc}") from None
    if "output" in d:
        out["output"] = str(Path(_str(d["output"], "output")).expanduser().resolve())
    if "init" in d and d["init"] is not None:
        init = _str(d["init"], "init")
        out["init"] = init if init == "default" else str(Path(expand_env(init, "init")).expanduser().resolve())
    if "device" in d:
        out["device"] = _str(d["device"], "device")
        if out["device"] != "auto" and out["device"].split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {out['device']!r}")
    if "threads" in d and d["threads"] is not None:
        out["threads"] = _int(d["threads"], "threads", 1)
    if "stages" in d and d["stages"] is not None:
        out["stages"] = _stages(d["stages"])
    return _finish(out)


def _stages(value: Any) -> tuple[Stage, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError("stages must be a non-empty list of {kind, steps}")
    stages = []
    for i, s in enumerate(value):
        sd = _mapping(s, f"stages[{i}]", {"kind", "steps", "relabel_shards"})
        kind = _str(sd.get("kind", "gt"), f"stages[{i}].kind")
        if kind not in STAGE_KINDS:
            raise ConfigError(f"stages[{i}].kind must be one of {list(STAGE_KINDS)}, got {kind!r}")
        if "steps" not in sd:
            raise ConfigError(f"stages[{i}].steps is required")
        relabel = _bool(sd.get("relabel_shards", False), f"stages[{i}].relabel_shards")
        if relabel and kind != "distill":
            raise ConfigError(f"stages[{i}].relabel_shards is only for distill stages")
        stages.append(Stage(kind, _int(sd["steps"], f"stages[{i}].steps", 1), relabel))
    return tuple(stages)


def _finish(out: dict[str, Any]) -> TrainConfig:
    stages = out.get("stages")
    if stages:
        total = sum(s.steps for s in stages)
        if "steps" in out and out["steps"] != total:
            raise ConfigError(f"steps ({out['steps']}) must equal the sum of stages[].steps ({total}), or be left out")
        out["steps"] = total
    elif "steps" not in out:
        raise ConfigError("steps is required (or a stages list)")
    else:
        out["stages"] = (Stage("gt", out["steps"]),)
    cfg = TrainConfig(**out)
    if cfg.low_res > cfg.high_res:
        raise ConfigError(f"low_res ({cfg.low_res}) must not exceed high_res ({cfg.high_res})")
    if cfg.warmup_steps >= cfg.steps and cfg.warmup_steps:
        raise ConfigError(f"warmup_steps ({cfg.warmup_steps}) must be smaller than steps ({cfg.steps})")
    if cfg.bf16 and cfg.device in ("cpu", "mps"):
        raise ConfigError(f"bf16 is for CUDA devices only; device is {cfg.device!r}")
    if is_simulated(cfg.predictor):
        for i, src in enumerate(cfg.data):
            if src.kind == "unlabeled":
                raise ConfigError(
                    f"data[{i}].kind 'unlabeled' needs a real predictor; the simulated one corrupts ground truth"
                )
    for i, stage in enumerate(cfg.stages):
        if not stage.relabel_shards:
            continue
        if not any(src.kind == "shards" for src in cfg.data):
            raise ConfigError(f"stages[{i}].relabel_shards: no data source has kind 'shards'")
        if is_simulated(cfg.predictor):
            raise ConfigError(
                f"stages[{i}].relabel_shards needs the real predictor that made the shards (predictor: ...): "
                "the windows of a crop are predicted again from its image, and the simulated one needs ground truth"
            )
    return cfg


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


_OVERRIDE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_override(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, value)`` for :func:`load_config`'s overrides.

    KEY may be dotted (``loss.trim``); VALUE is read as YAML, so ``0``, ``1e-4``,
    ``[0.0, 0.35]``, ``default`` and ``"[{kind: gt, steps: 700}]"`` all mean what they
    would in a recipe. A null VALUE is refused: overrides set values, they never unset them.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _OVERRIDE_KEY.fullmatch(key):
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a (dotted) key, e.g. loss.trim=0")
    try:
        value = load_yaml(raw)
    except yaml.YAMLError as exc:
        reason = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({reason})") from None
    if value is None:
        raise ConfigError(f"override {key}: empty or null value; give the value to set")
    return key, value


def load_config(path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> TrainConfig:
    """Read a YAML training config and apply overrides.

    Overrides come as a mapping and/or keyword arguments; keys may be dotted
    (``{"loss.grad": 0.3}``) and ``None`` values are ignored (an unset CLI flag), so the
    CLI can pass ``load_config(path, {"output": args.output})``. ``path=None`` starts
    from an empty config (overrides must then give ``steps``).
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"training config {p} not found")
        try:
            loaded = load_yaml(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a training config must be a YAML mapping, got {type(loaded).__name__}")
        data = dict(loaded or {})
    for key, value in {**dict(overrides or {}), **kwargs}.items():
        if value is not None:
            _set_dotted(data, key, value)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def recipe_path(name: str) -> Path:
    """Path of a bundled recipe, e.g. ``recipe_path("quick")``."""
    path = Path(__file__).with_name("recipes") / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no bundled recipe {name!r}; available: {available}")
    return path
