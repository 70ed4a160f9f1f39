"""Self-distillation: image pseudo-labels (G_S), their writer, distill rounds in the trainer
(bitwise resume inside a round) and the unlabeled data source."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from sddr_pipeline.data import make_scene, open_dataset, write_synthetic_dataset
from sddr_pipeline.distillation import make_pseudo_label, read_label_files, write_pseudo_labels
from sddr_pipeline.inference import RefineOptions, refine
from sddr_pipeline.models import Refiner, RefinerOutput
from sddr_pipeline.predictors import SampleContext, get_predictor
from sddr_pipeline.training import ConfigError, ExampleSource, load_config, recipe_path, train
from sddr_pipeline.training.config import config_from_dict
from sddr_pipeline.training.distill import crop_pseudo_label, pool_indices, round_start
from sddr_pipeline.inference.two_stage import TwoStageConfig

SIM = "simulated:low=48,high=128,cons=0.2,edge=2,texture=0.3,seed=1"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def refiner() -> Refiner:
    return Refiner.from_config("sddr-small", seed=0)


@pytest.fixture(scope="module")
def scene():
    s = make_scene(96, 128, seed=11)
    return s.rgb, SampleContext(name="scene-11", gt=s.depth, gt_kind="depth")


# ------------------------------------------------------------------ image pseudo-labels


def test_pseudo_label_shapes_and_determinism(refiner, scene):
    image, ctx = scene
    args = dict(low_res=48, high_res=128, context=ctx, seed=3)
    a = make_pseudo_label(image, get_predictor(SIM), refiner, **args)
    b = make_pseudo_label(image, get_predictor(SIM), refiner, **args)
    for key in ("gs", "refined", "regions", "low", "high"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert a.gs.shape == a.refined.shape == (96, 128) and a.gs.dtype == a.refined.dtype == np.float32
    assert a.regions.shape == (8, 96, 128) and a.regions.dtype == bool
    assert a.low.shape == (36, 48) and a.high.shape == (96, 128)


class TakeHigh:
    """A refiner that returns its HIGH input: the windows' fresh predictions then show in G_S."""

    config = Refiner.from_config("sddr-small").config
    device = torch.device("cpu")

    def __call__(self, low, high, max_side=None):
        half, quarter = (F.avg_pool2d(high, k) for k in (2, 4))
        return RefinerOutput(high, half, quarter, torch.ones_like(high), torch.ones_like(half), torch.ones_like(quarter))


def test_gs_differs_from_the_one_stage_g0(scene):
    image, ctx = scene
    label = make_pseudo_label(image, get_predictor(SIM), TakeHigh(), low_res=48, high_res=128, context=ctx)
    g0 = refine(image, get_predictor(SIM), TakeHigh(), low_res=48, high_res=128, context=ctx).edges
    assert g0 is not None and g0.shape == label.gs.shape
    assert float(np.abs(label.gs - g0).mean()) > 0.2 * float(g0.mean())


def test_regions_are_disjoint_clusters_of_the_top_five_percent(refiner, scene):
    image, ctx = scene
    label = make_pseudo_label(image, get_predictor(SIM), refiner, low_res=48, high_res=128, context=ctx, regions=6)
    top = label.gs > np.quantile(label.gs.astype(np.float64), 0.95)
    counts = label.regions.sum(0)
    assert counts.max() == 1  # disjoint
    assert np.array_equal(counts == 1, top)  # exactly the top-5% pixels
    assert all(r.any() for r in label.regions) and abs(top.mean() - 0.05) <= 1 / top.size


class CountingPredictor:
    """Wraps a predictor, counts predict calls and can fail on one sample."""

    def __init__(self, inner, fail_on: str | None = None) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0
        self.name, self.kind = inner.name, inner.kind
        self.default_resolutions = inner.default_resolutions

    def predict(self, image, resolution, context=None):
        if context is not None and context.name == self.fail_on:
            raise RuntimeError("interrupted")
        self.calls += 1
        return self.inner.predict(image, resolution, context)

    def predict_batch(self, images, resolution, contexts=None):
        return [self.predict(i, resolution, c) for i, c in zip(images, contexts or [None] * len(images))]


def test_write_pseudo_labels_is_resumable(refiner, tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", count=2, height=64, width=80, seed=5)
    dataset = open_dataset(data)
    names = dataset.names
    out = tmp_path / "labels"
    sim = get_predictor("simulated:low=32,high=80,seed=2")
    with pytest.raises(RuntimeError, match="interrupted"):
        write_pseudo_labels(dataset, out, CountingPredictor(sim, fail_on=names[1]), refiner)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["items"]) == [names[0]]
    counting = CountingPredictor(sim)
    run = write_pseudo_labels(data, out, counting, refiner)
    assert run.skipped == [names[0]] and run.written == [names[1]] and counting.calls > 0
    label = read_label_files(out, names[1])
    fresh = make_pseudo_label(dataset[1].image(), sim, refiner, context=dataset[1].context())
    for key in ("gs", "refined", "regions", "low", "high"):
        assert np.array_equal(getattr(label, key), getattr(fresh, key)), key
    assert write_pseudo_labels(data, out, CountingPredictor(sim), refiner).written == []
    with pytest.raises(ValueError, match="seed"):
        write_pseudo_labels(data, out, sim, refiner, seed=9)


# ------------------------------------------------------------------ distill rounds


def tiny(output: Path, **changes) -> dict:
    cfg = {
        "stages": [{"kind": "gt", "steps": 2}, {"kind": "distill", "steps": 3}, {"kind": "distill", "steps": 2}],
        "distill": {"pool": 3}, "preset": "sddr-small", "seed": 4, "batch_size": 2, "crop": 64,
        "crop_scale": [0.9, 1.0], "lr": 1e-3, "data": [{"kind": "synthetic", "size": [64, 80]}],
        "low_res": 32, "high_res": 80, "checkpoint_every": 10, "validate_every": 0, "output": str(output),
        "device": "cpu",
    }
    cfg.update(changes)
    return cfg


def test_rounds_and_pools_follow_the_stages(tmp_path):
    cfg = config_from_dict(tiny(tmp_path))
    assert [round_start(cfg.stages, s) for s in range(7)] == [0, 0, 2, 2, 2, 5, 5]
    assert pool_indices(2, 2, 3, cfg.distill) == range(4, 7)
    assert pool_indices(2, 2, 3, config_from_dict(tiny(tmp_path, distill={})).distill) == range(4, 10)
    with pytest.raises(ConfigError, match="distill.pool"):
        config_from_dict(tiny(tmp_path, distill={"pool": 0}))


def test_crop_origin_is_registered_and_flipped_with_the_example(tmp_path):
    cfg = config_from_dict(tiny(tmp_path))
    source = ExampleSource(cfg.data, cfg.examples)
    for index in range(6):
        ex = source.example(index, origin=True)
        plain = source.example(index)
        assert all(torch.equal(getattr(ex, k), getattr(plain, k)) for k in ("low", "high", "target", "mask"))
        origin = ex.origin
        assert origin.image.shape[:2] == origin.context.gt.shape and origin.predictor.regime(origin.high_res) == "high"
        gt = torch.from_numpy(origin.context.gt)[None, None]
        gt = F.interpolate(gt, size=(64, 64), mode="bilinear", align_corners=False)[0]
        gt = (gt - gt.min()) / (gt.max() - gt.min())
        err = float((gt - ex.target).abs().mean())
        mirrored = float((gt.flip(-1) - ex.target).abs().mean())
        assert err < 0.02 and mirrored > 0.1  # a mirrored or 1-px shifted gt is off by > 0.02


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distill-straight")
    train(config_from_dict(tiny(out)), progress=None)
    return out


def test_distill_round_trains_on_pseudo_labels(straight):
    records = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["gt"] * 2 + ["distill"] * 5
    assert all(set(r["loss"]) == {"gt", "total"} for r in records[:2])
    assert all({"grad", "fusion"} <= set(r["loss"]) and r["loss"]["grad"] > 0 for r in records[2:])
    # pool of 3, batches of 2: labels are made when first needed and reused within a round
    assert [r["pseudo_labels"]["made"] for r in records[2:]] == [2, 1, 0, 2, 1]
    first = load_file(str(straight / "distill" / "round-000002.safetensors"))
    second = load_file(str(straight / "distill" / "round-000005.safetensors"))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the round changed the weights


def test_interrupted_distill_round_resumes_bitwise(straight, tmp_path):
    out = tmp_path / "run"
    cfg = config_from_dict(tiny(out, checkpoint_every=1))

    def stop(line: str) -> None:
        if line.startswith("step 4/"):
            raise Interrupt(line)

    with pytest.raises(Interrupt):
        train(cfg, progress=stop)
    teacher = out / "distill" / "round-000002.safetensors"
    moved = shutil.move(teacher, tmp_path / "teacher.safetensors")
    from sddr_pipeline.training.trainer import ResumeError

    with pytest.raises(ResumeError, match="round that starts at step 2"):  # the CLI prints it as one line
        train(cfg, progress=None)
    shutil.move(moved, teacher)
    lines: list[str] = []
    train(cfg, progress=lines.append)
    assert lines[0] == "resumed from step-000004.json (step 4/7)"
    assert lines[1].startswith("distill round from step 2: pool of 3 examples")
    a = load_file(str(out / "checkpoints" / "step-000007.safetensors"))
    b = load_file(str(straight / "checkpoints" / "step-000007.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ unlabeled source

PREDICTOR_MODULE = '''
import numpy as np
from scipy.ndimage import gaussian_filter


def predict(image):
    """Disparity from smoothed luminance: a stand-in for a real model, no ground truth used."""
    lum = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return gaussian_filter(lum, 1.5) / 255.0 + 0.1
'''


@pytest.fixture()
def unlabeled(tmp_path) -> tuple[Path, str]:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(2):
        Image.fromarray(make_scene(72, 96, seed=20 + i).rgb).save(root / f"img{i}.png")
    module = tmp_path / "tiny_model.py"
    module.write_text(PREDICTOR_MODULE)
    return root, f"python:{module}:predict"


def test_unlabeled_source_makes_examples_without_ground_truth(unlabeled, refiner, tmp_path):
    root, spec = unlabeled
    cfg = config_from_dict(tiny(tmp_path, predictor=spec, data=[{"kind": "unlabeled", "root": str(root)}], crop=48))
    source = ExampleSource(cfg.data, cfg.examples)
    ex = source.example(1, origin=True)
    assert ex.low.shape == ex.target.shape == (1, 48, 48) and bool(ex.mask.all())
    assert torch.allclose(ex.target, ex.low, atol=1e-6)  # the LOW prediction is the value target
    assert ex.origin is not None and ex.origin.context.gt is None and ex.origin.high_res == cfg.high_res
    label = crop_pseudo_label(ex, refiner, RefineOptions(two_stage=TwoStageConfig(steps=2)), top=0.05, regions=4, seed=0)
    assert label.gs.shape == (1, 48, 48) and int((label.clusters >= 0).sum()) > 0


def test_unlabeled_source_refusals(unlabeled, tmp_path):
    root, spec = unlabeled
    with pytest.raises(ConfigError, match=r"data\[0\].kind 'unlabeled' needs a real predictor"):
        config_from_dict(tiny(tmp_path, data=[{"kind": "unlabeled", "root": str(root)}]))
    held = tmp_path / "nyu_sample"
    shutil.copytree(root, held)
    cfg = config_from_dict(tiny(tmp_path, predictor=spec, data=[{"kind": "unlabeled", "root": str(held)}]))
    with pytest.raises(ValueError, match="validation set"):
        ExampleSource(cfg.data, cfg.examples)


# ------------------------------------------------------------------ default recipe


def test_default_recipe_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("SDDR_SHARED_DATA", str(tmp_path / "shared"))
    cfg = load_config(recipe_path("default"))
    assert cfg.preset == "sddr-small" and cfg.predictor == "simulated"
    assert [s.kind for s in cfg.stages] == ["gt", "distill", "distill"]
    assert {s.kind for s in cfg.data} == {"dataset", "synthetic"}
    roots = [s.root for s in cfg.data if s.kind == "dataset"]
    assert roots == [str((tmp_path / "shared" / "middlebury2005_2006").resolve())]
    assert config_from_dict(cfg.to_dict()) == cfg


def test_default_recipe_reads_the_training_split_from_the_repo_root(shared_data, monkeypatch):
    if shared_data.resolve() != (Path(__file__).resolve().parents[1].parent / "shared" / "data").resolve():
        pytest.skip("the shared data is not at the recipe's default location")
    monkeypatch.delenv("SDDR_SHARED_DATA", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    cfg = load_config(recipe_path("default"))
    source = ExampleSource(cfg.data, cfg.examples)
    names = [n.split("/")[0] for n in source._datasets[0].names]
    assert len(names) == 28 and {"Cones", "Teddy", "Aloe"} <= set(names) and "Tsukuba" not in names
