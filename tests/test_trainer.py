"""Training config, example generation, validation metric and the resumable trainer."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sddr_pipeline.inference.normalize import resize
from sddr_pipeline.models import Refiner
from sddr_pipeline.data import make_scene
from sddr_pipeline.predictors import OutputKind, SampleContext, get_predictor, working_size
from sddr_pipeline.training import ConfigError, ExampleSource, load_config, parse_override, recipe_path, train
from sddr_pipeline.training.config import config_from_dict
from sddr_pipeline.training.samples import SourceSpec, crop_target, gt_disparity, make_example
from sddr_pipeline.training.trainer import aligned_absrel, learning_rate


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tiny(output: Path, **changes) -> dict:
    cfg = {
        "steps": 6, "preset": "sddr-small", "seed": 3, "batch_size": 2, "crop": 64, "crop_scale": [1.0, 1.0],
        "lr": 1e-3, "warmup_steps": 1, "data": [{"kind": "synthetic", "size": [64, 80]}],
        "low_res": 32, "high_res": 80, "checkpoint_every": 3, "validate_every": 0,
        "validation": {"scenes": 1, "size": [64, 80]}, "output": str(output), "device": "cpu",
    }
    cfg.update(changes)
    return cfg


# ------------------------------------------------------------------------- config


def test_quick_recipe_loads_and_round_trips():
    cfg = load_config(recipe_path("quick"))
    assert cfg.preset == "sddr-small" and cfg.crop == 256 and cfg.data[0].kind == "synthetic"
    assert [s.kind for s in cfg.stages] == ["gt"] and cfg.stages[0].steps == cfg.steps
    assert config_from_dict(cfg.to_dict()) == cfg


def test_overrides_are_dotted_and_none_is_ignored(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", "steps: 5\noutput: out\nloss: {grad: 0.5}\n")
    cfg = load_config(path, {"output": None, "loss.grad": 0.25}, steps=7)
    assert cfg.steps == 7 and cfg.loss.grad == 0.25 and cfg.output == str((Path.cwd() / "out").resolve())


def test_set_overrides_parse_as_yaml_and_reach_the_config(tmp_path):
    assert parse_override("loss.trim=0") == ("loss.trim", 0)
    assert parse_override("noise.cons=[0.0, 0.35]") == ("noise.cons", [0.0, 0.35])
    assert parse_override("stages=[{kind: gt, steps: 7}]") == ("stages", [{"kind": "gt", "steps": 7}])
    assert parse_override(" init = default") == ("init", "default")
    path = write_yaml(tmp_path / "c.yaml", "steps: 5\nloss: {grad: 0.5}\n")
    cfg = load_config(path, dict(parse_override(t) for t in ("loss.trim=0", "noise.cons=[0.0,0.35]", "steps=9")))
    assert cfg.loss.trim == 0.0 and cfg.noise.cons == (0.0, 0.35) and cfg.steps == 9 and cfg.loss.grad == 0.5


def test_exponent_numbers_without_a_dot_are_floats(tmp_path):
    assert parse_override("lr=1e-3") == ("lr", 0.001)
    assert parse_override("lr=-2E+2") == ("lr", -200.0)
    assert parse_override("init=1e3x") == ("init", "1e3x")
    assert parse_override("steps=12") == ("steps", 12)
    cfg = load_config(write_yaml(tmp_path / "c.yaml", "steps: 5\nlr: 5e-4\n"), dict([parse_override("weight_decay=1e-2")]))
    assert cfg.lr == 0.0005 and cfg.weight_decay == 0.01


@pytest.mark.parametrize("text", ["loss.trim", "=3", "loss.trim=", "loss.trim=null", "a..b=1", "x=[1,", "a b=1"])
def test_bad_set_overrides_are_refused_with_the_key(text):
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_train_cli_applies_set_and_reports_bad_ones(tmp_path, capsys):
    from sddr_pipeline.cli.main import main

    path = write_yaml(tmp_path / "c.yaml", "steps: 5\n")
    assert main(["train", "--config", str(path), "--set", "loss.trim"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "--set", "loss.trim=2"]) == 2
    assert "loss.trim" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, key",
    [
        ("steps: 5\nstepz: 3\n", "stepz"),
        ("steps: 5\nloss: {foo: 1}\n", "loss.foo"),
        ("steps: 5\nloss: {grad: -1}\n", "loss.grad"),
        ("steps: 0\n", "steps"),
        ("steps: 5\nlr: 0\n", "lr"),
        ("steps: 5\nbatch_size: 2.5\n", "batch_size"),
        ("steps: 5\ndata: [{kind: web}]\n", r"data\[0\]\.kind"),
        ("steps: 5\ndata: [{kind: dataset}]\n", r"data\[0\]\.root"),
        ("steps: 5\nnoise: {cons: [0.3, 0.1]}\n", "noise.cons"),
        ("steps: 5\ndevice: cpu\nbf16: true\n", "bf16"),
        ("steps: 5\nlow_res: 512\nhigh_res: 256\n", "low_res"),
        ("steps: 5\nstages: [{kind: gt, steps: 3}]\n", "stages"),
        ("steps: 5\nstages: [{kind: finetune, steps: 5}]\n", r"stages\[0\]\.kind"),
        ("steps: 5\npreset: sddr-huge\n", "preset"),
        ("steps: 5\ncrop: 1000000\n", "crop must be <= 8192, got 1000000"),
        ("steps: 5\nbatch_size: 100000\n", "batch_size must be <= 1024, got 100000"),
        ("steps: 5\nhigh_res: 1000000\n", "high_res must be <= 16384, got 1000000"),
        ("- 1\n- 2\n", "mapping"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_config(write_yaml(tmp_path / "c.yaml", text))


def test_learning_rate_warmup_then_cosine_to_the_floor():
    cfg = config_from_dict({"steps": 10, "lr": 1.0, "warmup_steps": 2, "min_lr_ratio": 0.1})
    assert [learning_rate(cfg, s) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert learning_rate(cfg, 9) == pytest.approx(0.1)
    assert learning_rate(cfg, 2) > learning_rate(cfg, 5) > learning_rate(cfg, 9)
    const = config_from_dict({"steps": 10, "lr": 0.3, "lr_schedule": "constant"})
    assert learning_rate(const, 7) == 0.3


# ----------------------------------------------------------------------- examples


class GroundTruthPredictor:
    """A perfect predictor: the ground-truth disparity, area-resized to the working size."""

    name = "gt"
    kind = OutputKind("disparity")

    def predict(self, image, resolution, context=None):
        h, w = image.shape[:2]
        size = working_size(h, w, resolution)
        gt = torch.from_numpy(np.asarray(context.gt, dtype=np.float32))[None, None]
        return resize(gt, size)[0, 0].numpy()


def _affine_residual(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.double().flatten(), b.double().flatten()
    design = torch.stack([x, torch.ones_like(x)], 1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution
    return float((design @ coef - y[:, None]).abs().max())


def test_low_high_and_target_crops_are_registered():
    h, w = 96, 120
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    gt = (1 + ((xx - 60) / 60) ** 2 + 0.5 * ((yy - 40) / 50) ** 2).astype(np.float32)
    image = np.zeros((h, w, 3), np.uint8)
    for seed in range(3):
        ex = make_example(image, gt, "disparity", GroundTruthPredictor(), np.random.default_rng(seed), name="q",
                          low_res=60, high_res=120, crop=48, crop_scale=(1.2, 1.6))
        inner = (slice(None), slice(4, -4), slice(4, -4))
        assert torch.allclose(ex.high, ex.target, atol=1e-5)
        assert _affine_residual(ex.low[inner], ex.target[inner]) < 3e-3
        # a one-pixel misregistration is far above that tolerance
        assert _affine_residual(ex.low[:, 5:-3, 4:-4], ex.target[inner]) > 1e-2


def test_target_crop_keeps_values_and_marks_invalid_pixels():
    gt = np.arange(1, 49, dtype=np.float32).reshape(6, 8)
    gt[1, 2], gt[3, 4], gt[5, 0] = 0.0, np.nan, np.inf
    disp, valid = gt_disparity(gt, "depth")
    target, mask = crop_target(disp, valid, (0.0, 0.0, 1.0, 1.0), (6, 8))
    assert torch.equal(mask[0, 0], torch.from_numpy(valid))
    expected = np.where(valid, 1.0 / np.where(valid, gt, 1.0), 0.0).astype(np.float32)
    assert torch.allclose(target[0, 0], torch.from_numpy(expected), rtol=1e-6, atol=0)


def test_examples_are_deterministic_per_index_and_normalised(tmp_path):
    cfg = config_from_dict(tiny(tmp_path))
    source = ExampleSource(cfg.data, cfg.examples)
    a, b, c = source.example(5), source.example(5), source.example(6)
    for name in ("low", "high", "target", "mask"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.high, c.high)
    assert a.low.shape == a.high.shape == a.target.shape == a.mask.shape == (1, 64, 64)
    for t in (a.low, a.high):
        assert float(t.min()) == 0.0 and float(t.max()) == 1.0
    assert bool(a.mask.all())  # synthetic depth is dense


def test_clean_examples_have_no_noise_and_mixed_ones_mix_two_high_maps(tmp_path):
    from sddr_pipeline.training.samples import MixedNoisePredictor

    clean = ExampleSource(*_source_args(tmp_path, {"cons": [0.2, 0.3], "edge": [2, 3], "texture": [0.3, 0.4], "clean": 1.0}))
    noisy = ExampleSource(*_source_args(tmp_path, {"cons": [0.2, 0.3], "edge": [2, 3], "texture": [0.3, 0.4]}))
    a, b = clean.example(2), noisy.example(2)
    assert not torch.equal(a.high, b.high)
    # no noise: HIGH is the normalised ground truth, exactly where the target is valid
    torch.testing.assert_close(a.high[a.mask], a.target[a.mask], atol=1e-5, rtol=0)
    mixed = ExampleSource(*_source_args(tmp_path, {"cons": [0.2, 0.3], "edge": [2, 3], "texture": [0.3, 0.4], "mixed": 1.0}))
    m1, m2 = mixed.example(2), mixed.example(2)
    assert torch.equal(m1.high, m2.high) and not torch.equal(m1.high, b.high)
    first, second = get_predictor("simulated:cons=0.3,seed=1"), get_predictor("simulated:cons=0,texture=0,seed=2")
    mix = MixedNoisePredictor(first, second, seed=7)
    scene = make_scene(48, 64, seed=1)
    ctx = SampleContext(name="s", gt=scene.depth, gt_kind="depth")
    low_a, low_m = first.predict(scene.rgb, 100, ctx), mix.predict(scene.rgb, 100, ctx)
    np.testing.assert_array_equal(low_a, low_m)
    ha, hb, hm = (p.predict(scene.rgb, 1024, ctx) for p in (first, second, mix))
    lo, hi = np.minimum(ha, hb), np.maximum(ha, hb)
    assert np.all(hm >= lo - 1e-6) and np.all(hm <= hi + 1e-6)
    assert np.abs(hm - ha).mean() > 1e-3 and np.abs(hm - hb).mean() > 1e-3


def test_noise_probabilities_are_validated(tmp_path):
    with pytest.raises(ValueError, match="noise.clean"):
        config_from_dict(tiny(tmp_path, noise={"clean": 1.5}))
    with pytest.raises(ValueError, match="noise.sharp_low"):
        config_from_dict(tiny(tmp_path, noise={"sharp_low": -0.1}))


def test_sharp_low_examples_keep_high_noise_and_give_a_sharp_consistent_low(tmp_path):
    from sddr_pipeline.training.samples import SHARP_LOW_EDGE, SharpLowPredictor, sharp_low_predictor

    noise = {"cons": [0.2, 0.3], "edge": [3, 4], "texture": [0.3, 0.4], "mixed": 0.5}
    plain = ExampleSource(*_source_args(tmp_path, noise))
    data, settings = _source_args(tmp_path, {**noise, "sharp_low": 1.0})
    sharp = ExampleSource(data, settings)
    low_err = {"plain": [], "sharp": []}
    for i in range(4):
        a, b = plain.example(i), sharp.example(i)
        assert torch.equal(b.low, sharp.example(i).low)
        for key, ex in (("plain", a), ("sharp", b)):
            low_err[key].append(float((ex.low - ex.target)[ex.mask].abs().mean()))
        # HIGH keeps the example's noise: far from the target
        assert float((b.high - b.target)[b.mask].abs().mean()) > 2 * low_err["sharp"][-1]
    assert np.mean(low_err["sharp"]) < 0.3 * np.mean(low_err["plain"])
    # the LOW regime is drawn at HIGH resolution with no more than SHARP_LOW_EDGE px of blur
    base = get_predictor("simulated:cons=0.3,edge=4,texture=0.5,seed=1")
    wrapped = sharp_low_predictor(base, settings, np.random.default_rng(0))
    assert isinstance(wrapped, SharpLowPredictor) and wrapped.resolution == settings.high_res
    assert float(wrapped.sharp.name.split("edge=")[1].split(",")[0]) <= SHARP_LOW_EDGE
    scene = make_scene(48, 64, seed=1)
    ctx = SampleContext(name="s", gt=scene.depth, gt_kind="depth")
    np.testing.assert_array_equal(wrapped.predict(scene.rgb, 1024, ctx), base.predict(scene.rgb, 1024, ctx))
    low = wrapped.predict(scene.rgb, 8, ctx)
    assert low.shape == base.predict(scene.rgb, settings.high_res, ctx).shape


def _source_args(tmp_path, noise):
    cfg = config_from_dict(tiny(tmp_path, noise=noise))
    return cfg.data, cfg.examples


def test_validation_sets_are_refused_as_training_data(tmp_path):
    held = tmp_path / "kitti_sample"
    held.mkdir()
    cfg = config_from_dict(tiny(tmp_path))
    with pytest.raises(ValueError, match="validation set"):
        ExampleSource([SourceSpec(kind="dataset", root=str(held))], cfg.examples)


def test_dataset_source_makes_examples(shared_data, tmp_path):
    root = shared_data / "middlebury2005_2006"
    cfg = config_from_dict(tiny(tmp_path, data=[{"kind": "dataset", "root": str(root), "layout": "middlebury2005_2006"}]))
    ex = ExampleSource(cfg.data, cfg.examples).example(0)
    assert ex.low.shape == (1, 64, 64) and bool(ex.mask.any())
    assert float(ex.target[ex.mask].max()) == pytest.approx(1.0) and float(ex.target[~ex.mask].abs().sum()) == 0.0


def test_aligned_absrel_exact():
    gt = torch.tensor([1.0, 2.0, 4.0, 8.0]).reshape(1, 1, 2, 2)
    mask = torch.ones_like(gt, dtype=torch.bool)
    assert aligned_absrel(2 * gt + 1, gt, mask) == pytest.approx(0.0, abs=1e-12)
    flat = torch.ones_like(gt)  # no scale to fit: prediction becomes mean(gt) = 3.75
    expected = (2.75 / 1 + 1.75 / 2 + 0.25 / 4 + 4.25 / 8) / 4
    assert aligned_absrel(flat, gt, mask) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------ trainer


class Interrupt(Exception):
    pass


def stop_at(step: int, lines: list[str]):
    def progress(line: str) -> None:
        lines.append(line)
        if line.startswith(f"step {step}/"):
            raise Interrupt(line)

    return progress


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    final = train(config_from_dict(tiny(out)), progress=None)
    assert final == out / "final"
    return out


def _same_files(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


@pytest.mark.parametrize("every, kill, resumed_from", [(3, 3, 3), (2, 3, 2)])
def test_interrupted_run_resumes_bitwise(straight_run, tmp_path, every, kill, resumed_from):
    out = tmp_path / "run"
    # validation on (it must not disturb training) and a different checkpoint cadence
    cfg = config_from_dict(tiny(out, checkpoint_every=every, validate_every=2))
    lines: list[str] = []
    with pytest.raises(Interrupt):
        train(cfg, progress=stop_at(kill, lines))
    lines.clear()
    train(cfg, progress=lines.append)
    assert lines[0] == f"resumed from step-{resumed_from:06d}.json (step {resumed_from}/6)"
    ckpt, ref = out / "checkpoints", straight_run / "checkpoints"
    _same_files(ckpt / "step-000006.safetensors", ref / "step-000006.safetensors")
    _same_files(ckpt / "step-000006.optim.safetensors", ref / "step-000006.optim.safetensors")
    _same_files(out / "final" / "model.safetensors", straight_run / "final" / "model.safetensors")
    steps = [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_data_workers_give_the_same_weights_and_resume_bitwise(straight_run, tmp_path):
    """Batches made ahead in a worker process are the same bits: same checkpoints and weights,
    also when the run is interrupted and resumed with the worker count changed."""
    out = tmp_path / "run"
    lines: list[str] = []
    with pytest.raises(Interrupt):
        train(config_from_dict(tiny(out, data_workers=1)), progress=stop_at(4, lines))
    train(config_from_dict(tiny(out, data_workers=2)), progress=None)
    ref = straight_run / "checkpoints"
    _same_files(out / "checkpoints" / "step-000006.optim.safetensors", ref / "step-000006.optim.safetensors")
    _same_files(out / "final" / "model.safetensors", straight_run / "final" / "model.safetensors")


def test_final_weights_load_and_refine(straight_run):
    refiner = Refiner.from_pretrained(straight_run / "final")
    x = torch.rand(1, 1, 40, 56)
    out = refiner(x, x)
    assert out.depth.shape == x.shape and bool(torch.isfinite(out.depth).all())
    saved = load_file(str(straight_run / "final" / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in saved.values() if v.is_floating_point())
    records = [json.loads(line) for line in (straight_run / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]["total"]) for r in records)


def test_finished_run_is_not_retrained(straight_run):
    lines: list[str] = []
    train(config_from_dict(tiny(straight_run)), progress=lines.append)
    assert lines[0].startswith("resumed from step-000006.json")
    assert not any(line.startswith("step ") for line in lines)


def test_resume_refuses_a_changed_config(straight_run):
    with pytest.raises(ValueError, match="lr"):
        train(config_from_dict(tiny(straight_run, steps=8, lr=5e-4)), progress=None)


def test_resume_may_switch_to_a_preset_with_the_same_parameters(straight_run, tmp_path):
    """A run goes on under a preset that differs only in parameter-free settings (its
    optimizer state and schedule continue); another architecture is refused."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    with pytest.raises(ValueError, match="preset"):
        train(config_from_dict(tiny(out, steps=7, preset="sddr-paper")), progress=None)
    lines: list[str] = []
    train(config_from_dict(tiny(out, steps=7, preset="sddr-small-fast")), progress=lines.append)
    assert lines[0] == "resumed from step-000006.json (step 6/7, preset sddr-small -> sddr-small-fast)"
    assert Refiner.from_pretrained(out / "final").config.name == "sddr-small-fast"
    record = json.loads((out / "checkpoints" / "step-000007.json").read_text())
    assert record["config"]["preset"] == "sddr-small-fast"


def test_resume_may_change_the_loss_for_the_remaining_steps(straight_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    train(config_from_dict(tiny(out, steps=7, loss={"select": 0.5})), progress=None)
    record = json.loads((out / "checkpoints" / "step-000007.json").read_text())
    assert record["config"]["loss"]["select"] == 0.5
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 7 and "select" in last["loss"]


def test_weight_average_is_an_exponential_moving_average():
    from sddr_pipeline.training.trainer import WeightAverage

    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
    average = WeightAverage(net, 0.75)
    for value in (5.0, 9.0):
        with torch.no_grad():
            net.weight.fill_(value)
        average.update(net)
    # 1 -> 0.75 * 1 + 0.25 * 5 = 2 -> 0.75 * 2 + 0.25 * 9 = 3.75
    assert torch.equal(average.state["weight"], torch.full((1, 2), 3.75))
    assert net.weight.data.eq(9.0).all()


def test_weight_average_resumes_bitwise_and_is_what_a_run_exports(straight_run, tmp_path):
    from sddr_pipeline.training.trainer import refiner_from_checkpoint

    ref, out = tmp_path / "ref", tmp_path / "run"
    train(config_from_dict(tiny(ref, ema=0.5)), progress=None)
    with pytest.raises(Interrupt):
        train(config_from_dict(tiny(out, ema=0.5)), progress=stop_at(4, []))
    train(config_from_dict(tiny(out, ema=0.5)), progress=None)
    _same_files(out / "checkpoints" / "step-000006.ema.safetensors", ref / "checkpoints" / "step-000006.ema.safetensors")
    _same_files(out / "final" / "model.safetensors", ref / "final" / "model.safetensors")
    # the weights follow the same path as without an average; the export is the average
    _same_files(ref / "checkpoints" / "step-000006.safetensors", straight_run / "checkpoints" / "step-000006.safetensors")
    averaged = refiner_from_checkpoint(ref / "checkpoints" / "step-000006.json")
    raw = refiner_from_checkpoint(ref / "checkpoints" / "step-000006.json", average=False)
    exported = Refiner.from_pretrained(ref / "final")
    name = "head_proj.weight"
    assert not torch.equal(averaged.net.state_dict()[name], raw.net.state_dict()[name])
    assert torch.allclose(exported.net.state_dict()[name].float(), averaged.net.state_dict()[name], atol=1e-3)


def test_weight_average_may_start_when_a_run_resumes(straight_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    lines: list[str] = []
    train(config_from_dict(tiny(out, steps=7, ema=0.9)), progress=lines.append)
    assert lines[1] == "weight average (decay 0.9) starts at step 6"
    record = json.loads((out / "checkpoints" / "step-000007.json").read_text())
    assert record["ema"] == "step-000007.ema.safetensors"


def _write_checkpoints(folder: Path, steps: list[int], corrupt: set[int]) -> None:
    from sddr_pipeline.training.trainer import save_checkpoint

    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(net.parameters())
    config = config_from_dict(tiny(folder.parent))
    for step in steps:
        save_checkpoint(folder, step, config, net, optimizer, "gt")
        if step in corrupt:
            weights = folder / f"step-{step:06d}.safetensors"
            weights.write_bytes(weights.read_bytes()[:20])


@pytest.mark.parametrize("keep, left", [(2, [1, 2, 3, 4]), (1, [2, 3, 4])])
def test_prune_keeps_the_newest_verified_checkpoints_and_never_counts_corrupt_ones(tmp_path, keep, left):
    from sddr_pipeline.training.trainer import _prune, list_checkpoints

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    _write_checkpoints(folder, [1, 2, 3, 4], corrupt={3, 4})
    _prune(folder, keep)
    assert sorted(step for step, _ in list_checkpoints(folder)) == left
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"step-{s:06d}{suffix}" for s in left for suffix in (".json", ".safetensors", ".optim.safetensors"))


def _train_cli(tmp_path: Path, out: Path, *extra: str, **changes) -> list[str]:
    import yaml

    from sddr_pipeline.cli.main import main

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny(out, **changes)))
    return [str(main(["train", "--config", str(config), "--quiet", *extra]))]


def test_all_unreadable_checkpoints_refuse_resume_unless_no_resume(straight_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    for weights in (out / "checkpoints").glob("step-*.safetensors"):
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    log = (out / "log.jsonl").read_bytes()
    before = sorted((p.name, p.stat().st_size) for p in (out / "checkpoints").iterdir())
    assert _train_cli(tmp_path, out) == ["2"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"sddr train: cannot resume from {out / 'checkpoints'}: none of its checkpoints is readable "
        "(step-000006.json: step-000006.safetensors does not match its recorded sha256 (truncated or changed); "
        "step-000003.json: step-000003.safetensors does not match its recorded sha256 (truncated or changed)); "
        "restore them, use another output folder, or start over with --no-resume"
    ]
    assert (out / "log.jsonl").read_bytes() == log
    assert sorted((p.name, p.stat().st_size) for p in (out / "checkpoints").iterdir()) == before
    assert _train_cli(tmp_path, out, "--no-resume", "--steps", "2") == ["0"]
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_refused_resume_is_one_cli_line(straight_run, tmp_path, capsys):
    assert _train_cli(tmp_path, straight_run, lr=5e-4) == ["2"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"sddr train: cannot resume from {straight_run / 'checkpoints' / 'step-000006.json'}: it was made with other "
        "settings (lr: 0.001 -> 0.0005); restore those settings,")


@pytest.mark.parametrize("preset", ["sddr-small", "sddr-small-fast"])
def test_init_starts_from_given_weights(tmp_path, preset):
    """``init:`` copies weights of the same architecture before step 0 (fine-tuning), also
    into a preset that differs only in settings that change no parameter (the fast head)."""
    src = Refiner.from_config("sddr-small", seed=11)
    src.save_pretrained(tmp_path / "w", dtype=torch.float32)
    cfg = config_from_dict(tiny(tmp_path / "run", steps=1, lr=1e-12, warmup_steps=0, init=str(tmp_path / "w"),
                                preset=preset))
    assert cfg.init == str((tmp_path / "w").resolve())
    final = Refiner.from_pretrained(train(cfg, progress=None))
    assert final.config.name == preset
    fresh = Refiner.from_config("sddr-small", seed=3)
    got, want, other = final.net.state_dict(), src.net.state_dict(), fresh.net.state_dict()
    name = "head_proj.weight"
    assert torch.allclose(got[name], want[name].half().float(), atol=1e-3)
    assert not torch.allclose(got[name], other[name], atol=1e-3)


def test_init_refuses_another_architecture(tmp_path):
    Refiner.from_config("sddr-small", seed=0).save_pretrained(tmp_path / "w")
    cfg = config_from_dict(tiny(tmp_path / "run", steps=1, warmup_steps=0, preset="sddr-paper", init=str(tmp_path / "w")))
    with pytest.raises(ValueError, match="not a 'sddr-paper' network"):
        train(cfg, progress=None)


def test_checkpoint_sync_carries_a_run_to_a_new_folder_bitwise(straight_run, tmp_path):
    """The cross-session route of the README: save the newest checkpoint to a versioned
    folder, restore it into a fresh run folder elsewhere, resume: same final weights."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("checkpoint_sync", Path(__file__).parents[1] / "scripts" / "checkpoint_sync.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    first = tmp_path / "session1"
    cfg = config_from_dict(tiny(first))
    with pytest.raises(Interrupt):
        train(cfg, progress=stop_at(5, []))
    store = tmp_path / "store"
    assert sync.main(["save", str(first), str(store)]) == 0
    assert sorted(p.name for p in store.iterdir()) == [
        "log.jsonl", "step-000003.json", "step-000003.optim.safetensors", "step-000003.safetensors"]
    second = tmp_path / "session2"
    assert sync.main(["restore", str(store), str(second)]) == 0
    train(config_from_dict(tiny(second)), progress=None)
    _same_files(straight_run / "final" / "model.safetensors", second / "final" / "model.safetensors")
    assert sync.main(["save", str(first), str(store)]) == 0  # same step again: allowed


def test_a_checkpoint_loads_as_a_refiner(straight_run, tmp_path):
    from sddr_pipeline.training.trainer import refiner_from_checkpoint

    refiner = refiner_from_checkpoint(straight_run / "checkpoints" / "step-000006.json")
    expect = load_file(str(straight_run / "checkpoints" / "step-000006.safetensors"))
    for key, value in refiner.net.state_dict().items():
        assert torch.equal(value, expect[key]), key
    (tmp_path / "step-000001.json").write_text("{}")
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        refiner_from_checkpoint(tmp_path / "step-000001.json")


def test_train_refuses_an_output_held_by_another_run(tmp_path, capsys):
    # issue 13 item 5: one writer per `sddr train --output`, released on exit and on errors
    import os
    import socket

    from sddr_pipeline.cli.main import main
    from sddr_pipeline.io.lock import LOCK_NAME, OutputLockError, output_lock

    out = tmp_path / "run"
    cfg = tiny(out)
    path = write_yaml(tmp_path / "c.yaml", json.dumps(cfg))
    holder = f"in use by another run (pid {os.getpid()} on {socket.gethostname()}"
    with output_lock(out):
        with pytest.raises(OutputLockError, match=f"output {out} is in use by another run"):
            train(config_from_dict(cfg), progress=None)
        assert main(["train", "--config", str(path), "--quiet"]) == 1
        assert holder in capsys.readouterr().err
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    with pytest.raises(Interrupt):
        train(config_from_dict(cfg), progress=stop_at(1, []))
    assert (out / "checkpoints").is_dir() and not (out / LOCK_NAME).exists()


def test_sddr_export_writes_a_checkpoints_average_with_runtime_settings(straight_run, tmp_path, capsys):
    from sddr_pipeline.cli.main import main
    from sddr_pipeline.training.trainer import refiner_from_checkpoint

    ckpt = straight_run / "checkpoints" / "step-000006.json"
    out = tmp_path / "w"
    assert main(["export", str(ckpt), str(out), "--set", "range_clamp=0", "--set", "max_side=512"]) == 0
    exported = Refiner.from_pretrained(out)
    assert (exported.config.name, exported.config.range_clamp, exported.config.max_side) == ("sddr-small", 0.0, 512)
    source = refiner_from_checkpoint(ckpt).net.state_dict()
    for key, value in exported.net.state_dict().items():  # fp16 copies of the checkpoint's weights
        assert torch.equal(value, source[key].half().float()), key
    assert exported.version in capsys.readouterr().out
    assert main(["export", str(ckpt), str(out)]) == 2  # weights already there
    assert "already holds weights" in capsys.readouterr().err
    assert main(["export", str(ckpt), str(out), "--overwrite", "--set", "stem_channels=[4,8,16]"]) == 2
    assert "stem_channels: not a runtime setting" in capsys.readouterr().err
    assert Refiner.from_pretrained(out).config.max_side == 512  # a refused export leaves the folder as it was
