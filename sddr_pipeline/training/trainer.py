"""The SDDR training loop: seeded AdamW over stages, atomic checkpoints, bitwise resume.

Output folder layout::

    OUTPUT/log.jsonl                          one JSON record per step (+ validation)
    OUTPUT/checkpoints/step-XXXXXX.safetensors        fp32 network weights
    OUTPUT/checkpoints/step-XXXXXX.optim.safetensors  AdamW state + torch RNG state
    OUTPUT/checkpoints/step-XXXXXX.json               step, config, param groups, sha256s
    OUTPUT/distill/round-XXXXXX.safetensors           fp32 teacher weights of each distill round
    OUTPUT/final/{config.json,model.safetensors}      fp16 weights for Refiner.from_pretrained
    OUTPUT/summary.json                               validation at init and at the end

Why a resumed run is bitwise identical to an uninterrupted one on CPU: the data of step
``s`` are examples ``s*B ... s*B+B-1``, each a pure function of (seed, index); the
learning rate is a pure function of ``s``; weights and optimizer moments are stored in
fp32 safetensors (no pickle) and the torch RNG state with them; the JSON file is written
last, so a checkpoint without it is ignored. CPU results depend on torch's intra-op
thread count (kernels split reductions by it), so training always runs at the config's
``threads`` (default :data:`DEFAULT_THREADS`), not at whatever count the calling process
has; a run resumed with a different ``threads`` continues, but not bitwise. Validation
runs in eval mode without gradients and touches no RNG. Self-distillation pseudo-labels
are a pure function of the round's teacher weights, saved when the round starts (see
``training.distill``), so a run resumed inside a round rebuilds them bitwise. Training
shards (``kind: shards``) are data outside the output folder: checkpoints record what
they held (files, rows, a digest: ``ExampleSource.fingerprint``) and a resume refuses
shards that changed since (a pseudo-label job that went on writing, another root).

Stages: ``config.stages`` is a list of (kind, steps); :data:`STAGE_LOSSES` maps a kind
to its loss: ``gt`` (L_gt, the paper's first epoch) and ``distill`` (one
self-distillation round: L_gt + L_grad + L_fusion against pseudo-labels G_S made from
the model at the round's start).
"""
from __future__ import annotations

import json
import math
import re
import time
from contextlib import nullcontext
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
from safetensors.torch import load_file, save

from ..devices import resolve_device
from ..inference.normalize import minmax_normalize_batch, resize, sanitize, to_disparity_like
from ..io.atomic import atomic_write_bytes, atomic_write_json, remove_temporaries
from ..io.hashing import sha256_files
from ..io.lock import output_lock
from ..io.resumable import check_settings
from ..models import Refiner, RefinerOutput
from ..models.config import PRESETS, RUNTIME_SETTINGS
from ..models.refiner import WEIGHTS_NAME
from ..predictors import PredictorSpec, get_predictor
from ..predictors.base import SampleContext, parse_options
from .config import RESUMABLE_CHANGES, Stage, TrainConfig
from .distill import DistillRound, round_start
from .losses import LossWeights, total_loss
from .samples import Batch, ExampleSettings, ExampleSource, SourceSpec, crop_target, gt_disparity, is_simulated, validation_scenes

Progress = Callable[[str], None]
StageLoss = Callable[[RefinerOutput, Batch, LossWeights], tuple[torch.Tensor, dict[str, float]]]

CHECKPOINT_RE = re.compile(r"^step-(\d{6,})\.json$")
FORMAT_VERSION = 1
#: Torch intra-op threads of a run whose config leaves ``threads`` unset. CPU kernels
#: split their reductions by the thread count, so the weights depend on it: a fixed
#: default (not the calling process's count) keeps a run a function of its config.
DEFAULT_THREADS = 1


def _gt_stage(output: RefinerOutput, batch: Batch, weights: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage ``gt``: L_gt only, against ground truth."""
    return total_loss(output, batch.target, batch.mask, weights)


def _distill_stage(output: RefinerOutput, batch: Batch, weights: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage ``distill``: L_gt plus L_grad (G_S in its regions) and L_fusion (Omega vs G_S)."""
    if batch.gs is None or batch.regions is None:
        raise ValueError("a distill batch needs pseudo-labels (gs and regions)")
    return total_loss(output, batch.target, batch.mask, weights, gs=batch.gs, regions=batch.regions)


STAGE_LOSSES: dict[str, StageLoss] = {"gt": _gt_stage, "distill": _distill_stage}


class GtBatches(torch.utils.data.Dataset):
    """Stage-``gt`` batch of a step, for DataLoader workers: each worker builds its own
    :class:`ExampleSource` on first use (it holds caches and open files that do not pickle)."""

    def __init__(self, sources: tuple[SourceSpec, ...], settings: ExampleSettings, device: str, batch_size: int) -> None:
        self.sources = sources
        self.settings = settings
        self.device = device
        self.batch_size = batch_size
        self._examples: ExampleSource | None = None

    def __getitem__(self, step: int) -> Batch:
        if self._examples is None:
            self._examples = ExampleSource(self.sources, self.settings, device=self.device)
        b = self.batch_size
        return self._examples.batch(range(step * b, (step + 1) * b))


def gt_batches(config: TrainConfig, examples: ExampleSource, start: int, device: torch.device) -> Iterator[Batch]:
    """The stage-``gt`` batches of steps ``start ...``, in step order.

    With ``config.data_workers`` > 0 they are made ahead by that many spawned worker
    processes (two batches queued per worker) while the network trains; the batches are
    the same bits either way, because an example is a pure function of (seed, index).
    """
    b = config.batch_size
    steps = [s for s in range(start, config.steps) if stage_at(config.stages, s).kind == "gt"]
    if config.data_workers == 0 or not steps:
        return (examples.batch(range(s * b, (s + 1) * b)) for s in steps)
    loader = torch.utils.data.DataLoader(
        GtBatches(config.data, config.examples, str(device), b), batch_size=None, sampler=steps,
        num_workers=min(config.data_workers, len(steps)), multiprocessing_context="spawn", prefetch_factor=2,
        generator=torch.Generator().manual_seed(config.seed),  # its worker seeds must not draw from the global RNG
    )
    return iter(loader)


def learning_rate(config: TrainConfig, step: int) -> float:
    """LR of 0-based step ``step``: linear warm-up, then constant or cosine decay to
    ``lr * min_lr_ratio`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    span = max(1, config.steps - config.warmup_steps - 1)
    t = min(1.0, (step - config.warmup_steps) / span)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def stage_at(stages: tuple[Stage, ...], step: int) -> Stage:
    """The stage that 0-based step ``step`` belongs to."""
    end = 0
    for stage in stages:
        end += stage.steps
        if step < end:
            return stage
    return stages[-1]


# ----------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationSet:
    """Held-out synthetic scenes at the HIGH working size: normalised inputs (Nx1xHxW),
    ground-truth disparity, its valid mask, and a depth-discontinuity band mask."""

    low: torch.Tensor
    high: torch.Tensor
    gt: torch.Tensor
    mask: torch.Tensor
    edges: torch.Tensor


def validation_predictor_spec(config: TrainConfig) -> str:
    """The configured predictor; a simulated one keeps its own (or default) noise levels
    with the regime boundary set by ``low_res``/``high_res``."""
    if not is_simulated(config.predictor):
        return config.predictor
    parsed = PredictorSpec.parse(config.predictor)
    options = {**parse_options(parsed.arg or ""), **parsed.options, "low": str(config.low_res), "high": str(config.high_res)}
    return "simulated:" + ",".join(f"{k}={v}" for k, v in options.items())


def discontinuity_band(gt: torch.Tensor, mask: torch.Tensor, ratio: float = 1.1) -> torch.Tensor:
    """Valid pixels whose 5x5 neighbourhood spans a disparity ratio above ``ratio``."""
    big = torch.where(mask, gt, torch.zeros_like(gt))
    small = torch.where(mask, gt, torch.full_like(gt, float("inf")))
    hi = F.max_pool2d(big, 5, 1, 2)
    lo = -F.max_pool2d(-small, 5, 1, 2)
    return mask & (hi > ratio * lo)


def build_validation(config: TrainConfig, device: torch.device) -> ValidationSet:
    predictor = get_predictor(validation_predictor_spec(config), str(device))
    lows, highs, gts, masks = [], [], [], []
    for rgb, depth, name in validation_scenes(config.validation.scenes, config.validation.size):
        ctx = SampleContext(name=name, gt=depth, gt_kind="depth")
        low = torch.from_numpy(to_disparity_like(sanitize(predictor.predict(rgb, config.low_res, ctx)), predictor.kind))[None, None]
        high = torch.from_numpy(to_disparity_like(sanitize(predictor.predict(rgb, config.high_res, ctx)), predictor.kind))[None, None]
        size = tuple(high.shape[-2:])
        disp, valid = gt_disparity(depth, "depth")
        gt, mask = crop_target(disp, valid, (0.0, 0.0, 1.0, 1.0), size)
        lows.append(minmax_normalize_batch(resize(low, size)))
        highs.append(minmax_normalize_batch(high))
        gts.append(gt)
        masks.append(mask)
    gt = torch.cat(gts)
    mask = torch.cat(masks)
    return ValidationSet(torch.cat(lows), torch.cat(highs), gt, mask, discontinuity_band(gt, mask))


def aligned_absrel(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, region: torch.Tensor | None = None) -> float:
    """Mean over samples of AbsRel ``|a*pred + b - gt| / gt`` in disparity space, with
    (a, b) the least-squares fit over the valid pixels, averaged over ``region`` (default:
    the valid pixels)."""
    region = mask if region is None else region & mask
    values = []
    for p, g, m, r in zip(pred.double(), gt.double(), mask, region):
        if int(r.sum()) == 0 or int(m.sum()) < 2:
            continue
        ps, gs = p[m], g[m]
        pc = ps - ps.mean()
        var = float((pc * pc).sum())
        a = float((pc * (gs - gs.mean())).sum()) / var if var > 0 else 0.0
        b = float(gs.mean() - a * ps.mean())
        values.append(float(((a * p[r] + b - g[r]).abs() / g[r]).mean()))
    return float(np.mean(values)) if values else float("nan")


def evaluate(net: torch.nn.Module, val: ValidationSet, bf16: bool = False) -> dict[str, float]:
    """AbsRel (all valid pixels, and the discontinuity band) of the refined output and, as
    references, of the LOW and HIGH inputs, on the validation scenes."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else nullcontext()
    with torch.no_grad(), ctx:
        refined = net(val.low.to(device), val.high.to(device)).depth.float().cpu()
    net.train(was_training)
    out = {}
    for name, pred in (("refined", refined), ("low", val.low), ("high", val.high)):
        out[f"absrel_{name}"] = aligned_absrel(pred, val.gt, val.mask)
        out[f"absrel_edges_{name}"] = aligned_absrel(pred, val.gt, val.mask, val.edges)
    return out


# ---------------------------------------------------------------------- checkpoints


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


class WeightAverage:
    """Exponential moving average of a network's state (``decay`` per step), in float32."""

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().float().clone() if v.is_floating_point() else v.detach().clone()
                      for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        for key, value in net.state_dict().items():
            avg = self.state[key]
            if avg.is_floating_point():
                avg.lerp_(value.detach().float(), 1.0 - self.decay)
            else:
                avg.copy_(value)

    def weights_of(self, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The average in ``net``'s dtypes, ready for ``load_state_dict``."""
        own = net.state_dict()
        return {k: v.to(own[k].dtype) for k, v in self.state.items()}


def save_checkpoint(folder: Path, step: int, config: TrainConfig, net: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, stage: str, data: list[dict[str, Any]] | None = None,
                    average: WeightAverage | None = None) -> Path:
    """Write the files of checkpoint ``step`` (weights, optimizer state, the weight average
    when there is one; JSON last); returns the JSON path."""
    stem = f"step-{step:06d}"
    weights = folder / f"{stem}.safetensors"
    optim = folder / f"{stem}.optim.safetensors"
    _save_safetensors(weights, dict(net.state_dict()))
    state = optimizer.state_dict()
    tensors = {f"state.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    _save_safetensors(optim, tensors)
    record = {
        "format": FORMAT_VERSION,
        "step": step,
        "total_steps": config.steps,
        "stage": stage,
        "weights": weights.name,
        "optimizer": optim.name,
        "sha256": {weights.name: sha256_files(weights), optim.name: sha256_files(optim)},
        "param_groups": state["param_groups"],
        "config": config.to_dict(),
        "time": time.time(),
    }
    if average is not None:
        ema = folder / f"{stem}.ema.safetensors"
        _save_safetensors(ema, average.state)
        record["ema"] = ema.name
        record["sha256"][ema.name] = sha256_files(ema)
    if data:
        record["data"] = data
    path = folder / f"{stem}.json"
    atomic_write_json(path, record)
    return path


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, json path) of the checkpoints in ``folder``, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found, reverse=True)


class ResumeError(ValueError):
    """An output folder's checkpoints cannot be continued (unreadable, or made by another config or data)."""


class MissingTeacherError(ResumeError, FileNotFoundError):
    """A run resumed inside a distill round whose teacher weights file is gone."""


def verify_checkpoint(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(record, "") when checkpoint ``path`` and its files exist and match their recorded
    sha256; else (None, why not)."""
    try:
        record = json.loads(path.read_text())
        for name in (record["weights"], record["optimizer"], *([record["ema"]] if "ema" in record else [])):
            file = path.parent / name
            if not file.is_file():
                return None, f"{name} is missing"
            if sha256_files(file) != record["sha256"][name]:
                return None, f"{name} does not match its recorded sha256 (truncated or changed)"
        return record, ""
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable record ({type(exc).__name__}: {exc})"


def latest_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose files exist and match their recorded sha256.

    Raises :class:`ResumeError` when ``folder`` holds checkpoints but none is valid:
    starting over would silently discard the run (its step count and ``log.jsonl``).
    """
    problems = []
    for _, path in list_checkpoints(folder):
        record, why = verify_checkpoint(path)
        if record is not None:
            return path, record
        problems.append(f"{path.name}: {why}")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; ... ({len(problems)} in all)" if len(problems) > 3 else "")
        raise ResumeError(
            f"cannot resume from {folder}: none of its checkpoints is readable ({shown}); "
            "restore them, use another output folder, or start over with --no-resume"
        )
    return None


def refiner_from_checkpoint(path: str | Path, device: str = "cpu", average: bool = True) -> Refiner:
    """The network of checkpoint ``path`` (its ``step-XXXXXX.json``) as a :class:`Refiner`,
    after verifying its files' sha256: to score or export a run's intermediate weights.
    With ``average`` (default) a checkpoint's weight average is used when it has one."""
    path = Path(path)
    record, why = verify_checkpoint(path)
    if record is None:
        raise ValueError(f"{path}: not a readable training checkpoint ({why})")
    refiner = Refiner.from_config(record["config"]["preset"])
    name = record["ema"] if average and "ema" in record else record["weights"]
    own = refiner.net.state_dict()
    state = {k: v.to(own[k].dtype) for k, v in load_file(str(path.parent / name)).items()}
    refiner.net.load_state_dict(state, strict=True)
    return refiner.to(device)


def export_checkpoint(path: str | Path, output: str | Path, average: bool = True,
                      overwrite: bool = False, **settings: Any) -> Refiner:
    """Write checkpoint ``path``'s network as a weights folder (fp16 ``model.safetensors`` +
    ``config.json``) that :meth:`Refiner.from_pretrained` loads: how a run's checkpoint
    becomes shipped weights. ``settings`` change runtime settings that keep every
    parameter (``max_side``, ``range_clamp``, ...; :meth:`Refiner.with_config`). An
    existing ``output`` with weights in it is refused unless ``overwrite``."""
    output = Path(output)
    if not overwrite and (output / WEIGHTS_NAME).exists():
        raise FileExistsError(f"{output} already holds weights ({WEIGHTS_NAME}); overwrite (--overwrite) replaces them")
    unknown = sorted(set(settings) - RUNTIME_SETTINGS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a runtime setting; these are: {', '.join(sorted(RUNTIME_SETTINGS))}")
    refiner = refiner_from_checkpoint(path, average=average)
    if settings:
        refiner = refiner.with_config(**settings)
    refiner.save_pretrained(output)
    return refiner


def load_checkpoint(path: Path, record: dict[str, Any], net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore weights, optimizer state and the torch RNG; returns the checkpoint's step."""
    folder = path.parent
    net.load_state_dict(load_file(str(folder / record["weights"])), strict=True)
    tensors = load_file(str(folder / record["optimizer"]))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(record["step"])


def load_init(net: torch.nn.Module, config: TrainConfig) -> str:
    """Copy the weights named by ``config.init`` into ``net``; returns their version.

    The architecture must be the run's ``preset``; settings that change no parameter
    (``max_side``, ``head_scale``, ``fusion_median``, ...) may differ, so a network can be
    fine-tuned under another of them. Anything else is an error naming the weights.
    """
    src = Refiner.from_pretrained(config.init)
    want = PRESETS[config.preset].to_dict()
    have = src.config.to_dict()
    differ = sorted(k for k in want if k not in RUNTIME_SETTINGS and want[k] != have.get(k))
    if differ:
        raise ValueError(
            f"init weights {config.init} are not a {config.preset!r} network (they differ in {', '.join(differ)}); "
            "set preset to their architecture"
        )
    net.load_state_dict(src.net.state_dict())
    return src.version


def _with_defaults(recorded: Any, defaults: Any) -> Any:
    """``recorded`` settings with the keys it lacks taken from ``defaults`` (nested): a
    setting added after a checkpoint was made, at its default, changes nothing."""
    if not isinstance(recorded, dict) or not isinstance(defaults, dict):
        return recorded
    return {**defaults, **{k: _with_defaults(v, defaults.get(k)) for k, v in recorded.items()}}


def same_parameters(preset: Any, other: str) -> bool:
    """Whether presets ``preset`` and ``other`` differ only in :data:`RUNTIME_SETTINGS`: a
    run may then resume under the other one (its optimizer state and schedule go on)."""
    if preset not in PRESETS or other not in PRESETS:
        return False
    a, b = PRESETS[preset].to_dict(), PRESETS[other].to_dict()
    return all(a[k] == b[k] for k in a if k not in RUNTIME_SETTINGS)


def _check_compatible(record: dict[str, Any], config: TrainConfig, path: Path,
                      data: list[dict[str, Any]] | None = None) -> None:
    recorded = _with_defaults(record.get("config", {}), TrainConfig(steps=1).to_dict())
    ignore = RESUMABLE_CHANGES | ({"preset"} if same_parameters(recorded.get("preset"), config.preset) else set())
    check_settings(recorded, config.to_dict(), f"from {path}", ignore=ignore,
                   advice="restore those settings, use another output folder, or start over with --no-resume",
                   error=ResumeError)
    before = {d.get("source"): d for d in record.get("data") or []}
    for d in data or []:
        old = before.get(d["source"])
        if old is not None and old != d:
            raise ResumeError(
                f"cannot resume from {path}: the training shards of data[{d['source']}] ({d['root']}) changed since "
                f"the checkpoint ({old.get('rows')} rows in {old.get('files')} files, predictions "
                f"{old.get('prediction_space')} then; {d['rows']} rows in {d['files']} files, {d['prediction_space']} "
                "now), so the examples would differ; restore them, use another output folder, or start over with --no-resume"
            )


def _prune(folder: Path, keep: int) -> None:
    """Delete verified checkpoints older than the ``keep`` newest verified ones.

    Corrupt checkpoints neither count toward ``keep`` nor are deleted, so pruning never
    removes the last checkpoint a run can resume from.
    """
    verified = [path for _, path in list_checkpoints(folder) if verify_checkpoint(path)[0] is not None]
    for path in verified[keep:]:
        stem = path.name[: -len(".json")]
        path.unlink(missing_ok=True)
        for suffix in (".safetensors", ".optim.safetensors"):
            (folder / f"{stem}{suffix}").unlink(missing_ok=True)


def _clear_run(out: Path) -> None:
    """Remove this trainer's checkpoints, round teachers and log (``--no-resume``); nothing else."""
    folder = out / "checkpoints"
    for _, path in list_checkpoints(folder):
        stem = path.name[: -len(".json")]
        for suffix in (".json", ".safetensors", ".optim.safetensors"):
            (folder / f"{stem}{suffix}").unlink(missing_ok=True)
    for path in (out / "distill").glob("round-*.safetensors"):
        path.unlink()
    (out / "log.jsonl").unlink(missing_ok=True)


def round_teacher_path(out: Path, start: int) -> Path:
    return out / "distill" / f"round-{start:06d}.safetensors"


def prepare_round(
    config: TrainConfig, examples: ExampleSource, net: torch.nn.Module, out: Path, step: int, device: torch.device
) -> DistillRound:
    """The distill round that 0-based ``step`` belongs to, with its teacher.

    At the round's first step the current weights become its teacher file; later (a run
    resumed inside the round) the file must exist and is reloaded, so the labels are the
    ones the round would have made.
    """
    start = round_start(config.stages, step)
    path = round_teacher_path(out, start)
    if step == start:
        _save_safetensors(path, dict(net.state_dict()))
    elif not path.is_file():
        raise MissingTeacherError(
            f"cannot resume inside the distill round that starts at step {start}: its teacher weights {path} "
            "are missing; resume from a checkpoint before that step or start over with --no-resume"
        )
    teacher = Refiner.from_config(config.preset, seed=config.seed).to(device)
    teacher.net.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    stage = stage_at(config.stages, step)
    return DistillRound(examples, teacher, start, stage.steps, config.batch_size, config.distill, stage.relabel_shards)


# ---------------------------------------------------------------------------- log


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def _truncate_log(path: Path, step: int) -> None:
    """Keep only records up to ``step`` (a resumed run rewrites what came after)."""
    kept = [r for r in _read_log(path) if int(r.get("step", 0)) <= step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _val_line(step: int, val: dict[str, float]) -> str:
    return (
        f"validation @ step {step}: AbsRel refined {val['absrel_refined']:.4f} (LOW input "
        f"{val['absrel_low']:.4f}, HIGH input {val['absrel_high']:.4f}); at depth edges "
        f"{val['absrel_edges_refined']:.4f} (LOW {val['absrel_edges_low']:.4f}, HIGH {val['absrel_edges_high']:.4f})"
    )


# -------------------------------------------------------------------------- train


def train(config: TrainConfig, resume: bool = True, progress: Progress | None = print) -> Path:
    """Train a refiner as ``config`` says and return ``OUTPUT/final`` (fp16 weights).

    With ``resume`` the newest valid checkpoint under ``OUTPUT/checkpoints`` is continued
    (bitwise identical to an uninterrupted run on CPU); without it, this trainer's old
    checkpoints and log are removed first. ``progress`` receives one line per step.
    The run holds OUTPUT's exclusive lock (:mod:`sddr_pipeline.io.lock`): a second
    trainer on the same OUTPUT is refused with :class:`~sddr_pipeline.io.lock.OutputLockError`.

    Torch runs with ``config.threads`` intra-op threads (:data:`DEFAULT_THREADS` when
    unset), never the caller's count, which is restored on return.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads or DEFAULT_THREADS)
    try:
        with output_lock(config.output_dir):
            return _train(config, resume, progress)
    finally:
        torch.set_num_threads(previous)


def _train(config: TrainConfig, resume: bool, progress: Progress | None) -> Path:
    say = progress or (lambda _line: None)
    device = torch.device(resolve_device(config.device))
    out = config.output_dir
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)
    log_path = out / "log.jsonl"

    examples = ExampleSource(config.data, config.examples, device=str(device))
    refiner = Refiner.from_config(config.preset, seed=config.seed)
    net = refiner.net.to(device)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    start = 0
    if not resume:
        _clear_run(out)
    found = latest_checkpoint(ckpt_dir) if resume else None
    if found is not None:
        path, record = found
        _check_compatible(record, config, path, examples.fingerprint())
        start = load_checkpoint(path, record, net, optimizer)
        _truncate_log(log_path, start)
        said = record.get("config", {}).get("preset")
        switch = f", preset {said} -> {config.preset}" if said != config.preset else ""
        say(f"resumed from {path.name} (step {start}/{config.steps}{switch})")
        if config.ema and "ema" not in record:
            say(f"weight average (decay {config.ema}) starts at step {start}")
    else:
        torch.manual_seed(config.seed)
        if config.init is not None:
            say(f"initialised from {config.init} ({load_init(net, config)})")
        if log_path.exists():
            log_path.unlink()

    average = None
    if config.ema:
        average = WeightAverage(net, config.ema)
        if found is not None and "ema" in found[1]:
            average.state = load_file(str(found[0].parent / found[1]["ema"]), device=str(device))
    val = build_validation(config, device) if config.validate_every else None
    if val is not None and start == 0:
        init = evaluate(net, val, config.bf16)
        _append(log_path, {"step": 0, "val": init})
        say(_val_line(0, init))

    _run_steps(config, net, optimizer, examples, val, start, device, out, log_path, say, average)
    if average is not None:
        net.load_state_dict(average.weights_of(net))
    return _finish(config, refiner, out, log_path, say)


class _BatchFeed:
    """Where each step's batch comes from: the ground-truth batches of the ``gt`` steps,
    or the pseudo-labelled batches of the current distill round (a new round, with its
    teacher, where one starts)."""

    def __init__(self, config: TrainConfig, examples: ExampleSource, net: torch.nn.Module, out: Path, start: int,
                 device: torch.device, say: Progress) -> None:
        self.config, self.examples, self.net, self.out, self.device, self.say = config, examples, net, out, device, say
        self.current: DistillRound | None = None
        self.gt_iter = gt_batches(config, examples, start, device)

    def batch(self, step: int, kind: str) -> tuple[Batch, tuple[int, float, int]]:
        """The batch of 0-based ``step`` of a ``kind`` stage, and the pseudo-labels made
        for it: (count, seconds, read from the training shards)."""
        if kind != "distill":
            self.current = None
            return next(self.gt_iter).to(self.device), (0, 0.0, 0)
        config = self.config
        if self.current is None or self.current.start != round_start(config.stages, step):
            self.current = prepare_round(config, self.examples, self.net, self.out, step, self.device)
            shards = any(src.kind == "shards" for src in config.data) and not self.current.relabel_shards
            stored = " (training-shard examples use their stored G_S)" if shards else ""
            self.say(f"distill round from step {self.current.start}: pool of {len(self.current.indices)} examples, "
                     f"pseudo-labels by the teacher of step {self.current.start}{stored}")
        current = self.current
        before = (current.labelled, current.label_seconds, current.stored)
        batch = current.batch(step, config.batch_size).to(self.device)
        return batch, (current.labelled - before[0], current.label_seconds - before[1], current.stored - before[2])


def _optimise(net: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, kind: str, config: TrainConfig,
              autocast: Any, step: int) -> tuple[dict[str, float], float]:
    """One optimiser step on ``batch`` with the ``kind`` stage's loss; returns the loss
    parts and the gradient norm (NaN without clipping). A non-finite loss stops the run."""
    with autocast:
        output = net(batch.low, batch.high)
    loss, parts = STAGE_LOSSES[kind](output, batch, config.loss)
    if not math.isfinite(parts["total"]):
        raise FloatingPointError(f"non-finite loss at step {step + 1}: {parts}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (
        float(torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)) if config.grad_clip else float("nan")
    )
    optimizer.step()
    return parts, grad_norm


def _run_steps(config: TrainConfig, net: torch.nn.Module, optimizer: torch.optim.Optimizer, examples: ExampleSource,
               val: ValidationSet | None, start: int, device: torch.device, out: Path, log_path: Path,
               say: Progress, average: WeightAverage | None = None) -> None:
    """Steps ``start ... config.steps - 1``: learning rate, batch, optimiser step (and the
    weight average), a log record (with validation every ``validate_every`` steps, of the
    average when there is one), checkpoints, a progress line."""
    ckpt_dir = out / "checkpoints"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if config.bf16 and device.type == "cuda" else nullcontext()
    run_start = time.perf_counter()
    feed = _BatchFeed(config, examples, net, out, start, device, say)
    for step in range(start, config.steps):
        t0 = time.perf_counter()
        stage = stage_at(config.stages, step)
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch, labels = feed.batch(step, stage.kind)
        t_data = time.perf_counter() - t0
        parts, grad_norm = _optimise(net, optimizer, batch, stage.kind, config, autocast, step)
        if average is not None:
            average.update(net)
        done = step + 1
        seconds = time.perf_counter() - t0
        record: dict[str, Any] = {
            "step": done, "stage": stage.kind, "lr": lr, "loss": parts, "grad_norm": grad_norm,
            "seconds": round(seconds, 4), "data_seconds": round(t_data, 4),
        }
        if stage.kind == "distill":
            record["pseudo_labels"] = {"made": labels[0], "seconds": round(labels[1], 4)}
            if labels[2]:
                record["pseudo_labels"]["stored"] = labels[2]
        if val is not None and (done % config.validate_every == 0 or done == config.steps):
            record["val"] = evaluate(_averaged(net, average), val, config.bf16)
        _append(log_path, record)
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(ckpt_dir, done, config, net, optimizer, stage.kind, examples.fingerprint(), average)
            _prune(ckpt_dir, config.keep_checkpoints)
        elapsed = time.perf_counter() - run_start
        eta = elapsed / (done - start) * (config.steps - done)
        say(
            f"step {done}/{config.steps} [{stage.kind}] loss {parts['total']:.4f} lr {lr:.2e} "
            f"{seconds:.2f}s/step (data {t_data:.2f}s) elapsed {_fmt_time(elapsed)} eta {_fmt_time(eta)}"
        )
        if "val" in record:
            say(_val_line(done, record["val"]))


def _averaged(net: torch.nn.Module, average: WeightAverage | None) -> torch.nn.Module:
    """``net``, or a copy of it holding ``average``'s weights."""
    if average is None:
        return net
    copy = deepcopy(net)
    copy.load_state_dict(average.weights_of(net))
    return copy


def _finish(config: TrainConfig, refiner: Refiner, out: Path, log_path: Path, say: Progress) -> Path:
    """Save ``OUTPUT/final`` and ``summary.json``, say how validation moved; returns the
    final weights folder."""
    final = out / "final"
    refiner.save_pretrained(final)
    _write_summary(out, config, log_path)
    summary = json.loads((out / "summary.json").read_text())
    init, last = summary.get("validation_init"), summary.get("validation_final")
    if init and last:
        say(
            f"validation AbsRel on {config.validation.scenes} held-out scenes: "
            f"{'random init' if config.init is None else 'init ' + config.init} {init['absrel_refined']:.4f} -> trained {last['absrel_refined']:.4f} (LOW input {last['absrel_low']:.4f}); "
            f"at depth edges {init['absrel_edges_refined']:.4f} -> {last['absrel_edges_refined']:.4f} "
            f"(LOW {last['absrel_edges_low']:.4f})"
        )
    say(f"final weights: {final}")
    return final


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _write_summary(out: Path, config: TrainConfig, log_path: Path) -> None:
    records = _read_log(log_path)
    vals = [r for r in records if "val" in r]
    steps = [r for r in records if "seconds" in r]
    summary = {
        "steps": config.steps,
        "preset": config.preset,
        "train_seconds_logged": round(sum(r["seconds"] for r in steps), 2),
        "validation_init": vals[0]["val"] if vals and vals[0]["step"] == 0 else None,
        "validation_final": vals[-1]["val"] if vals else None,
        "final_loss": steps[-1]["loss"] if steps else None,
    }
    atomic_write_json(out / "summary.json", summary)
