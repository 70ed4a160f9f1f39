"""Ray pipelines: inputs, config, resources, stages, and end-to-end runs on one local cluster.

The Ray tests share ONE session cluster (2 CPUs, 1 logical GPU so the GPU-pinned path is
exercised while torch sees no CUDA, 200 MB object store), always shut down; every test
runs under an alarm so a hang fails instead of blocking. Images are tiny (48x64) with a
``python:`` predictor module the tests write; the ``simulated`` predictor is used only on a
dataset with ground truth.
"""
from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sddr_pipeline.pipelines.config import (ConfigError, PointCloudPipelineConfig, PseudoLabelPipelineConfig,
                                             RefinePipelineConfig, build_config, configs_dir, load_config)
from sddr_pipeline.pipelines.inputs import InputError, check_id, id_from_path, list_inputs
from sddr_pipeline.pipelines.resources import resolve_resources
from sddr_pipeline.pipelines.runner import PipelineError, PipelineFailed, Watchdog
from sddr_pipeline.pipelines.stage import INPUT_SCHEMA, PseudoLabelStage, RefineStage, read_inputs
from sddr_pipeline.shards import (LayoutError, decode_array, decode_confidence, decode_depth, decode_regions, read_errors,
                                  read_metadata, read_shards)

SIZE = (48, 64)
RES = {"low_res": 32, "high_res": 64}
HANG_GUARD_S = 150
PREDICTOR = '''
import os, time
import numpy as np
DELAY = {delay!r}
PID_DIR = {pid_dir!r}


def depth(image):
    if PID_DIR:
        open(os.path.join(PID_DIR, str(os.getpid())), "w").close()
    if DELAY:
        time.sleep(DELAY)
    if (image[..., 0] > 250).all() and (image[..., 1] < 5).all():
        raise ValueError("poison image")
    g = image.astype(np.float32).mean(-1) / 255.0
    return np.linspace(0.2, 1.0, image.shape[1], dtype=np.float32)[None, :] + 0.1 * g
'''


# ----------------------------------------------------------------------------- helpers


def write_predictor(folder: Path, delay: float = 0.0, pid_dir: Path | None = None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"predictor_{abs(hash((delay, str(pid_dir))))}.py"
    path.write_text(PREDICTOR.format(delay=delay, pid_dir=str(pid_dir) if pid_dir else None))
    return f"python:{path}:depth"


def write_images(folder: Path, names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """PNG images named ``names`` (relative, without extension) -> their pixels."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        pixels = (rng.random((*SIZE, 3)) * 255).astype(np.uint8)
        path = folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        out[name] = pixels
    return out


def write_poison(path: Path) -> None:
    """A uniform magenta image: the test predictor refuses it (a failed prediction)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*SIZE, 3), (255, 0, 255), np.uint8)).save(path)


def output_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def assert_exactly_once(out: Path, expected: set[str]) -> tuple[list[str], list[str]]:
    """Every expected id once across shards/ and errors/, read with plain pandas; no
    temporaries and nothing but final files anywhere under ``out``."""
    done = pd.read_parquet(out / "shards", columns=["id"])["id"].tolist()
    failed = pd.read_parquet(out / "errors", columns=["id"])["id"].tolist() if (out / "errors").is_dir() else []
    both = done + failed
    assert len(both) == len(set(both)), "an id appears twice"
    assert set(both) == expected
    for rel in output_files(out):
        assert rel == "manifest.json" or (rel.split("/")[0] in ("shards", "errors") and rel.split("/")[1].startswith("part-")
                                          and rel.endswith(".parquet")), rel
    return done, failed


# ---------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("hang_guard")


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> str:
    from sddr_pipeline.models import Refiner

    return str(Refiner.from_config("sddr-small").save_pretrained(tmp_path_factory.mktemp("weights")))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local cluster for every Ray test (reused if another test file started it)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, num_gpus=1, object_store_memory=200 * 2**20, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


def run_refine(ray_cluster, input_, output, predictor, weights, **settings):
    from sddr_pipeline.pipelines.refine import run_refine_pipeline

    settings = {"batch_size": 2, "rows_per_shard": 3, "stall_timeout_s": 90.0, "progress_interval_s": 0.0, **RES, **settings}
    lines: list[str] = []
    report = run_refine_pipeline(str(input_), str(output), predictor, weights, progress=lines.append, **settings)
    return report, lines


# ----------------------------------------------------------------- inputs, config, resources


def test_ids_are_clean_keys():
    assert id_from_path("/data/a/b.PNG") == "data/a/b"
    assert id_from_path("x\\y.jpg") == "x/y"
    assert check_id("we ird/ü name", "t") == "we ird/ü name"
    for bad in ("../escape", "/abs/x", "a//b", "a/./b", "tab\there", "back\\slash", ""):
        with pytest.raises(InputError, match="invalid id"):
            check_id(bad, "list.txt:3")


def test_list_inputs_folder_list_and_parquet(tmp_path):
    write_images(tmp_path / "imgs", ["b", "sub/a", ".hidden/c"])
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    found = list_inputs(str(tmp_path / "imgs"))
    assert found.kind == "images" and found.ids == ("b", "sub/a")
    assert found.sources == (str(tmp_path / "imgs/b.png"), str(tmp_path / "imgs/sub/a.png"))

    lst = tmp_path / "lists" / "in.txt"
    lst.parent.mkdir()
    lst.write_text(f"# comment\n\n{tmp_path}/imgs/b.png\tcustom/id\n../imgs/sub/a.png\n{tmp_path}/imgs/b.png  other\n")
    found = list_inputs(str(lst))
    assert found.kind == "list"
    assert dict(zip(found.ids, found.sources)) == {
        "custom/id": f"{tmp_path}/imgs/b.png", f"{str(tmp_path).lstrip('/')}/imgs/sub/a": f"{tmp_path}/imgs/sub/a.png",
        "other": f"{tmp_path}/imgs/b.png"}
    lst.write_text(f"{tmp_path}/imgs/b.png\t../../etc/passwd\n")
    with pytest.raises(InputError, match=r"in.txt:1: invalid id '../../etc/passwd'"):
        list_inputs(str(lst))
    lst.write_text("a.png x\nb.png x\n")
    with pytest.raises(InputError, match="occur more than once"):
        list_inputs(str(lst))

    table = pa.table({"id": ["z", "y"], "image": [b"1", b"2"]})
    pq.write_table(table, tmp_path / "images.parquet")
    found = list_inputs(str(tmp_path / "images.parquet"))
    assert found.kind == "parquet" and found.ids == ("y", "z")
    pq.write_table(pa.table({"id": ["q"]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="missing \\['image'\\]"):
        list_inputs(str(tmp_path / "bad.parquet"))
    with pytest.raises(InputError, match="does not exist"):
        list_inputs(str(tmp_path / "nowhere"))


def test_config_errors_name_the_setting(tmp_path):
    base = {"input": "in", "output": "out", "predictor": "simulated", "weights": "w"}
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) actor_count"):
        build_config(RefinePipelineConfig, {**base, "actor_count": 2})
    with pytest.raises(ConfigError, match="^mode: must be one of"):
        build_config(RefinePipelineConfig, {**base, "mode": "three-stage"})
    with pytest.raises(ConfigError, match="^batch_size: must be a positive integer"):
        build_config(RefinePipelineConfig, {**base, "batch_size": 0})
    with pytest.raises(ConfigError, match="^gpus_per_actor: above 1 must be a whole number"):
        build_config(RefinePipelineConfig, {**base, "gpus_per_actor": 1.5})
    with pytest.raises(ConfigError, match="^ray.object_store_memory"):
        build_config(RefinePipelineConfig, {**base, "ray": {"object_store_memory": 10}})
    with pytest.raises(ConfigError, match="^predictor: is required"):
        build_config(RefinePipelineConfig, {**base, "predictor": ""})
    path = tmp_path / "c.yaml"
    path.write_text("predictor: simulated\nweights: w\nactors: 3\nray: {num_cpus: 2}\n")
    cfg = load_config(RefinePipelineConfig, path, {"input": "i", "output": "o", "actors": None, "batch_size": 8})
    assert (cfg.actors, cfg.batch_size, cfg.ray.num_cpus, cfg.gpus_per_actor) == (3, 8, 2, None)


def test_resources_never_starve_the_reads():
    cfg = build_config(RefinePipelineConfig, {"input": "i", "output": "o", "predictor": "p", "weights": "w"})
    auto_cpu = resolve_resources(cfg, {"CPU": 2.0})
    assert (auto_cpu.actors, auto_cpu.gpus_per_actor, auto_cpu.torch_threads) == (1, 0.0, 1)
    auto_gpu = resolve_resources(cfg, {"CPU": 16.0, "GPU": 2.0})
    assert (auto_gpu.actors, auto_gpu.gpus_per_actor, auto_gpu.cpus_per_actor) == (2, 1.0, 1.0)
    shared = resolve_resources(build_config(RefinePipelineConfig, {**cfg.to_dict(), "gpus_per_actor": 0.5}), {"CPU": 8.0, "GPU": 1.0})
    assert shared.actors == 2
    two = resolve_resources(build_config(RefinePipelineConfig, {**cfg.to_dict(), "actors": 2, "gpus_per_actor": 0}), {"CPU": 2.0})
    assert two.actors * two.cpus_per_actor + two.read_cpus <= 2.0
    with pytest.raises(ConfigError, match="would hang"):
        resolve_resources(build_config(RefinePipelineConfig, {**cfg.to_dict(), "actors": 2, "cpus_per_actor": 1.0}), {"CPU": 2.0})
    with pytest.raises(ConfigError, match="wait forever"):
        resolve_resources(build_config(RefinePipelineConfig, {**cfg.to_dict(), "gpus_per_actor": 1.0}), {"CPU": 4.0})


def test_preflight_refuses_what_would_fail_inside_ray(tmp_path):
    from sddr_pipeline.pipelines.runner import preflight

    base = {"input": str(tmp_path), "output": str(tmp_path / "out"), "predictor": "simulated", "weights": str(tmp_path)}
    preflight(build_config(RefinePipelineConfig, base))
    with pytest.raises(ConfigError, match="^predictor: unknown predictor 'nosuch'"):
        preflight(build_config(RefinePipelineConfig, {**base, "predictor": "nosuch:x"}))
    with pytest.raises(ConfigError, match="^weights: .*missing does not exist"):
        preflight(build_config(RefinePipelineConfig, {**base, "weights": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match="^output: memory://"):
        preflight(build_config(RefinePipelineConfig, {**base, "output": "memory://out"}))


def _assert_watchdog_fires_on_a_stall() -> None:
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with Watchdog(0.5) as dog:
            while time.monotonic() - t0 < 20:
                time.sleep(0.05)
    assert dog.fired and time.monotonic() - t0 < 5


def test_watchdog_interrupts_a_stalled_driver():
    _assert_watchdog_fires_on_a_stall()
    with Watchdog(0.5) as dog:  # beating keeps it quiet
        for _ in range(20):
            time.sleep(0.05)
            dog.beat()
    assert not dog.fired


def test_cli_options_become_a_config():
    import argparse

    from sddr_pipeline.pipelines.cli import _overrides, add_pipeline_arguments, add_pseudolabel_arguments

    parser = argparse.ArgumentParser(prog="sddr")
    sub = parser.add_subparsers(dest="command", required=True)
    add_pipeline_arguments(sub)
    add_pseudolabel_arguments(sub)
    args = parser.parse_args(["pipeline", "refine", "--input", "s3://b/in", "--output", "s3://b/out", "--predictor", "simulated",
                              "--weights", "w", "--actors", "2", "--gpus-per-actor", "0.5", "--batch-size", "8",
                              "--mode", "two-stage", "--storage-option", 'client_kwargs={"endpoint_url": "http://127.0.0.1:9"}'])
    cfg = load_config(RefinePipelineConfig, None, _overrides(args, ("mode", "steps", "save_predictions")))
    assert (cfg.actors, cfg.gpus_per_actor, cfg.batch_size, cfg.mode) == (2, 0.5, 8, "two-stage")
    assert cfg.storage_options == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    assert callable(parser.parse_args(["pseudolabel", "--input", "i"]).func)


# ----------------------------------------------------------------------- stages (no Ray)


def test_refine_stage_turns_failures_into_rows(tmp_path, weights):
    from sddr_pipeline import get_predictor, refine
    from sddr_pipeline.models import Refiner

    pixels = write_images(tmp_path, ["good"])
    write_poison(tmp_path / "poison.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "empty.png").write_bytes(b"")
    ids = ["good", "poison", "broken", "empty", "missing"]
    batch = read_inputs(pa.table({"id": ids, "source": [str(tmp_path / f"{i}.png") for i in ids]}), attempts=2)
    assert batch.schema == INPUT_SCHEMA
    spec = write_predictor(tmp_path / "mods")
    rows = {r["id"]: r for r in RefineStage(spec, weights, torch_threads=1, include_image=True, **RES)(batch).to_pylist()}
    assert {k: r["error_stage"] for k, r in rows.items()} == {
        "good": None, "poison": "predict", "broken": "decode", "empty": "decode", "missing": "read"}
    assert "poison image" in rows["poison"]["error_reason"] and "empty" in rows["empty"]["error_reason"]
    good = rows["good"]
    expected = refine(pixels["good"], get_predictor(spec), Refiner.from_pretrained(weights), edges=False, **RES)
    assert np.allclose(decode_depth(good), expected.depth, rtol=1e-4, atol=1e-5)
    assert (good["width"], good["height"], good["space"], good["metric"]) == (64, 48, expected.space, False)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(good["image"]))), pixels["good"])


GARBAGE_PREDICTOR = """
import numpy as np


def depth(image):
    kind = int(image[0, 0, 0]) % 4
    if kind == 0:
        return np.full(image.shape[:2], np.nan, np.float32)
    if kind == 1:
        return np.zeros(image.shape[:2], np.float32)
    if kind == 2:
        raise SystemExit(1)
    return np.full(image.shape[:2], np.inf, np.float32)
"""


def test_refine_stage_turns_garbage_predictions_into_error_rows(tmp_path, weights):
    names = ["nan", "zero", "exit", "inf"]
    for i, name in enumerate(names):
        Image.fromarray(np.full((24, 32, 3), i, np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "garbage.py").write_text(GARBAGE_PREDICTOR)
    batch = read_inputs(pa.table({"id": names, "source": [str(tmp_path / f"{n}.png") for n in names]}), attempts=1)
    stage = RefineStage(f"python:{tmp_path / 'mods' / 'garbage.py'}:depth", weights, torch_threads=1, **RES)
    rows = {r["id"]: r for r in stage(batch).to_pylist()}
    assert {k: (r["error_stage"], r["depth"]) for k, r in rows.items()} == {n: ("predict", None) for n in names}
    assert "returned no finite value (all 768 pixels are NaN or inf)" in rows["nan"]["error_reason"]
    assert "returned no finite value (all 768 pixels are NaN or inf)" in rows["inf"]["error_reason"]
    assert "returned a constant map (0 at every finite pixel)" in rows["zero"]["error_reason"]
    assert "failed: SystemExit: 1" in rows["exit"]["error_reason"]


def test_refine_stage_turns_non_finite_refined_maps_into_error_rows(tmp_path, weights):
    import torch

    write_images(tmp_path, ["good"])
    batch = read_inputs(pa.table({"id": ["good"], "source": [str(tmp_path / "good.png")]}), attempts=1)
    stage = RefineStage(write_predictor(tmp_path / "mods"), weights, torch_threads=1, **RES)
    with torch.no_grad():
        for p in stage.refiner.net.parameters():
            p.fill_(float("nan"))
    row = stage(batch).to_pylist()[0]
    assert (row["error_stage"], row["depth"]) == ("refine", None)
    assert row["error_reason"].startswith("NonFiniteResultError: refinement gave non-finite pixels (depth 3072 of 3072")


def test_refine_stage_fills_confidence_only_when_asked(tmp_path, weights):
    from sddr_pipeline import get_predictor, refine
    from sddr_pipeline.confidence import confidence
    from sddr_pipeline.models import Refiner

    pixels = write_images(tmp_path, ["good"])
    batch = read_inputs(pa.table({"id": ["good"], "source": [str(tmp_path / "good.png")]}))
    spec = write_predictor(tmp_path / "mods")
    plain = RefineStage(spec, weights, torch_threads=1, **RES)(batch).to_pylist()[0]
    assert plain["error_stage"] is None and plain["confidence"] is None and decode_confidence(plain) is None
    row = RefineStage(spec, weights, torch_threads=1, confidence=True, **RES)(batch).to_pylist()[0]
    assert row["error_stage"] is None, row["error_reason"]
    conf = decode_confidence(row)
    assert conf.dtype == np.float32 and conf.shape == decode_depth(row).shape == SIZE
    assert conf.min() >= 0 and conf.max() <= 1 and conf.max() > 0
    expected = confidence(refine(pixels["good"], get_predictor(spec), Refiner.from_pretrained(weights), edges=False, **RES))
    assert np.allclose(conf, expected, atol=1e-4)


def test_confidence_setting_config_cli_and_identity():
    import argparse

    from sddr_pipeline.pipelines.cli import _overrides, add_pipeline_arguments
    from sddr_pipeline.pipelines.refine import refine_job

    base = {"input": "in", "output": "out", "predictor": "simulated", "weights": "w"}
    with pytest.raises(ConfigError, match="^confidence: must be true or false"):
        build_config(RefinePipelineConfig, {**base, "confidence": "yes"})
    parser = argparse.ArgumentParser(prog="sddr")
    add_pipeline_arguments(parser.add_subparsers(dest="command", required=True))
    argv = ["pipeline", "refine", "--input", "i", "--output", "o", "--predictor", "simulated", "--weights", "w"]
    extra = ("mode", "steps", "save_predictions", "confidence")
    off = load_config(RefinePipelineConfig, None, _overrides(parser.parse_args(argv), extra))
    on = load_config(RefinePipelineConfig, None, _overrides(parser.parse_args(argv + ["--confidence"]), extra))
    assert (off.confidence, on.confidence) == (False, True)
    assert "confidence" not in refine_job(off).identity  # outputs made before the setting existed still resume
    assert refine_job(on).identity["confidence"] is True and refine_job(on).stage_kwargs["confidence"] is True
    yaml_default = load_config(RefinePipelineConfig, Path(__file__).parents[1] / "pipelines" / "configs" / "refine.yaml", base)
    assert yaml_default.confidence is False


def test_range_clamp_setting_config_cli_identity_and_stage_default(weights, tmp_path):
    import argparse

    from sddr_pipeline.inference import RANGE_CLAMP
    from sddr_pipeline.models import Refiner
    from sddr_pipeline.pipelines.cli import _overrides, add_pipeline_arguments
    from sddr_pipeline.pipelines.refine import refine_job

    base = {"input": "in", "output": "out", "predictor": "simulated", "weights": "w"}
    assert RefinePipelineConfig(**base).range_clamp is None  # None = the refiner's own clamp
    for bad in (0.5, -0.1, "x", True):
        with pytest.raises(ConfigError, match="^range_clamp: must be a number in"):
            build_config(RefinePipelineConfig, {**base, "range_clamp": bad})
    parser = argparse.ArgumentParser(prog="sddr")
    add_pipeline_arguments(parser.add_subparsers(dest="command", required=True))
    argv = ["pipeline", "refine", "--input", "i", "--output", "o", "--predictor", "simulated", "--weights", "w"]
    extra = ("mode", "steps", "save_predictions", "confidence", "range_clamp")
    raw = load_config(RefinePipelineConfig, None, _overrides(parser.parse_args(argv + ["--range-clamp", "0"]), extra))
    assert raw.range_clamp == 0 and refine_job(raw).identity["range_clamp"] == 0  # a resume must keep it
    assert refine_job(raw).stage_kwargs["range_clamp"] == 0
    stage = RefineStage("simulated", str(weights), mode="two-stage", range_clamp=0.02, device="cpu", torch_threads=1)
    assert stage.options.range_clamp == 0.02 and stage.options.mode == "two-stage"
    default = RefineStage("simulated", str(weights), device="cpu", torch_threads=1)
    assert default.options.range_clamp is None
    residual_weights = Refiner.from_config("sddr-small-residual").save_pretrained(tmp_path / "residual")
    # None = the refiner's own: none for the gated presets, RANGE_CLAMP for the residual head
    assert default.options.resolved(default.predictor, default.refiner).range_clamp == 0
    residual = RefineStage("simulated", str(residual_weights), device="cpu", torch_threads=1)
    assert residual.options.resolved(residual.predictor, residual.refiner).range_clamp == RANGE_CLAMP


def test_window_median_setting_config_cli_identity_and_stage(weights):
    import argparse

    from sddr_pipeline.pipelines.cli import POINTCLOUD_SETTINGS, _overrides, add_pipeline_arguments
    from sddr_pipeline.pipelines.pointcloud import pointcloud_job
    from sddr_pipeline.pipelines.refine import refine_job

    base = {"input": "in", "output": "out", "predictor": "simulated", "weights": "w"}
    assert RefinePipelineConfig(**base).window_median is None  # None = TwoStageConfig's
    for cls in (RefinePipelineConfig, PointCloudPipelineConfig):
        for bad in (4, 0, 17, "7", True, 2.0):
            with pytest.raises(ConfigError, match="^window_median: must be an odd integer between 1 and 15"):
                build_config(cls, {**base, "window_median": bad})
    parser = argparse.ArgumentParser(prog="sddr")
    add_pipeline_arguments(parser.add_subparsers(dest="command", required=True))
    argv = ["--input", "i", "--output", "o", "--predictor", "simulated", "--weights", "w", "--mode", "two-stage"]
    extra = ("mode", "steps", "save_predictions", "confidence", "range_clamp", "window_median")
    two = load_config(RefinePipelineConfig, None,
                      _overrides(parser.parse_args(["pipeline", "refine", *argv, "--window-median", "3"]), extra))
    assert refine_job(two).identity["window_median"] == 3 and refine_job(two).stage_kwargs["window_median"] == 3
    one = build_config(RefinePipelineConfig, {**base, "window_median": 3})
    plain = build_config(RefinePipelineConfig, {**base, "mode": "two-stage"})
    # a one-stage job has no windows, and outputs made before the setting existed still resume
    assert "window_median" not in refine_job(one).identity and "window_median" not in refine_job(plain).identity
    points = load_config(PointCloudPipelineConfig, None,
                         _overrides(parser.parse_args(["pipeline", "pointcloud", *argv, "--window-median", "5"]),
                                    POINTCLOUD_SETTINGS))
    assert pointcloud_job(points).identity["window_median"] == 5 and pointcloud_job(points).stage_kwargs["window_median"] == 5
    assert "window_median" not in pointcloud_job(build_config(PointCloudPipelineConfig, base)).identity
    stage = RefineStage("simulated", str(weights), mode="two-stage", window_median=1, device="cpu", torch_threads=1)
    assert stage.options.two_stage.window_median == 1
    default = RefineStage("simulated", str(weights), mode="two-stage", device="cpu", torch_threads=1)
    assert default.options.two_stage.window_median == 7


def test_bundled_configs_work_without_a_training_run():
    # `sddr pipeline refine --config pipelines/configs/refine.yaml --input URI --output URI` (the
    # files' own usage lines) must not need weights that only a training run makes
    from sddr_pipeline.models import Refiner

    for cls, name in ((RefinePipelineConfig, "refine.yaml"), (PseudoLabelPipelineConfig, "pseudolabel.yaml")):
        cfg = load_config(cls, configs_dir() / name, {"input": "in", "output": "out"})
        assert cfg.weights == "default", name
    for cls, name in ((RefinePipelineConfig, "refine.yaml"), (PointCloudPipelineConfig, "pointcloud.yaml")):
        cfg = load_config(cls, configs_dir() / name, {"input": "in", "output": "out"})
        # the refinement settings are the library's own, as the bar scored them
        assert cfg.range_clamp is None and cfg.window_median is None, name
    assert Refiner.from_pretrained("default") is not None


def test_pseudolabel_stage_rows(tmp_path, weights):
    write_images(tmp_path, ["a"])
    batch = read_inputs(pa.table({"id": ["a"], "source": [str(tmp_path / "a.png")]}))
    row = PseudoLabelStage(write_predictor(tmp_path / "mods"), weights, steps=1, regions=4, torch_threads=1, **RES)(batch).to_pylist()[0]
    assert row["error_stage"] is None, row["error_reason"]
    regions = decode_regions(row)
    assert regions.shape == (4, *SIZE) and regions.sum(axis=0).max() <= 1 and regions.any()
    assert decode_array(row["gs"]).shape == SIZE and decode_depth(row).shape == SIZE
    assert decode_array(row["low"]).shape[1] == RES["low_res"] and row["image"] is not None


def result_row(id_: str, failed: bool = False) -> dict:
    from sddr_pipeline.shards import encode_array, result_schema

    row = {name: None for name in result_schema("depth").names}
    row.update(id=id_, source=f"/in/{id_}.png", predictor="p@1", refiner="r@1")
    if failed:
        return {**row, "error_stage": "decode", "error_reason": "broken"}
    depth = np.full(SIZE, len(id_), np.float32)
    return {**row, "width": SIZE[1], "height": SIZE[0], "depth": encode_array(depth), "depth_encoding": "npy",
            "depth_dtype": "float32", "depth_shape": list(SIZE), "scale": 1.0, "shift": 0.0, "scale_source": "predictor",
            "space": "disparity", "metric": False, "seconds": 0.01}


def test_workers_publish_whole_shards_and_the_driver_commits_each_summary_once(tmp_path):
    from sddr_pipeline.pipelines.inputs import InputSet
    from sddr_pipeline.pipelines.refine import refine_job
    from sddr_pipeline.pipelines.runner import PipelineReport, ShardCollector, open_manifest
    from sddr_pipeline.shards import OutputLayout, ShardPlan
    from sddr_pipeline.shards.writer import SUMMARY_SCHEMA, publish_shard

    ids = ("a", "b", "c", "d", "e", "f")
    cfg = build_config(RefinePipelineConfig, {"input": "in", "output": str(tmp_path / "out"), "predictor": "p", "weights": "w",
                                              "rows_per_shard": 2, "max_failed_share": 0.34})
    job, plan, layout = refine_job(cfg), ShardPlan(ids, 2), OutputLayout(cfg.output)
    inputs = InputSet("in", "images", ids, tuple(f"/in/{i}.png" for i in ids))
    manifest = open_manifest(layout, job, cfg, inputs, plan)
    report = PipelineReport(output=cfg.output, total=6, pending_at_start=6)
    collector = ShardCollector(plan, [0, 1, 2], layout, job, cfg, manifest, report)

    def worker(index: int, rows: list[dict], versions=None) -> pa.Table:  # what a ShardStage call returns
        return pa.Table.from_pylist([publish_shard(layout, "depth", index, rows, config=cfg.public_dict(), versions=versions)],
                                    schema=SUMMARY_SCHEMA)

    one = worker(1, [result_row("d", failed=True), result_row("c")])
    assert (tmp_path / "out" / "shards" / "part-00001.parquet").exists() and report.shards_written == []  # not committed
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["completed"] == {}
    collector.add(one)
    collector.add(worker(1, [result_row("c"), result_row("d", failed=True)]))  # a retried call: same file, ignored
    assert report.shards_written == [1] and collector.ignored == 1
    collector.add(worker(0, [result_row("b"), result_row("a")]))
    assert pq.read_table(tmp_path / "out" / "shards" / "part-00000.parquet").column("id").to_pylist() == ["a", "b"]
    assert read_errors(cfg.output).column("id").to_pylist() == ["d"]
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["counts"]["pending"] == 2 and saved["completed"]["1"]["errors_file"] == "errors/part-00001.parquet"
    assert saved["completed"]["1"]["bytes"] == (tmp_path / "out" / "shards" / "part-00001.parquet").stat().st_size
    assert collector.missing() == {2: 2}
    with pytest.raises(PipelineFailed, match="3 of 6 inputs failed, more than max_failed_share=0.34"):
        collector.add(worker(2, [result_row("e", failed=True), result_row("f", failed=True)]))
    assert_exactly_once(tmp_path / "out", set(ids))

    # a worker whose models differ from the recorded ones writes nothing, and the driver stops
    other = OutputLayout(str(tmp_path / "other"))
    manifest = open_manifest(other, job, cfg, inputs, plan)
    manifest["versions"] = {"predictor": "p@0", "refiner": "r@0"}
    refused = publish_shard(other, "depth", 0, [result_row("a"), result_row("b")], config={}, versions=("p@0", "r@0"))
    assert refused["bytes"] is None and not (tmp_path / "other" / "shards").exists()
    with pytest.raises(PipelineError, match=r"models changed .*\(p@0, r@0 then; p@1, r@1 now\)"):
        ShardCollector(plan, [0], other, job, cfg, manifest, report).add(pa.Table.from_pylist([refused], schema=SUMMARY_SCHEMA))


def test_shard_stage_reads_refines_and_writes_a_whole_shard(tmp_path, weights):
    from sddr_pipeline.pipelines.runner import shard_tasks
    from sddr_pipeline.pipelines.stage import ShardStage, read_shard
    from sddr_pipeline.shards import OutputLayout, ShardPlan
    from sddr_pipeline.shards.writer import SUMMARY_SCHEMA

    names = ["a", "b", "c", "d", "e"]
    write_images(tmp_path / "in", names)
    (tmp_path / "in" / "c.png").write_bytes(b"")  # a decode error inside the shard
    inputs = list_inputs(str(tmp_path / "in"))
    plan = ShardPlan(inputs.ids, 3)
    tasks = shard_tasks(inputs, plan, [1, 0])
    assert [t.num_rows for t in tasks] == [1, 1] and [t.column("shard")[0].as_py() for t in tasks] == [1, 0]
    read = read_shard(pa.concat_tables(tasks), attempts=1)
    assert read.num_rows == 2 and read.column("inputs").type.value_type.field("image").type == pa.large_binary()
    out = tmp_path / "out"
    stage = ShardStage(RefineStage, write_predictor(tmp_path / "mods"), weights, layout=OutputLayout(str(out)),
                       config={"batch_size": 2}, batch_size=2, stage_kwargs={"torch_threads": 1, **RES})
    summaries = stage(read)
    assert summaries.schema == SUMMARY_SCHEMA
    assert {r["shard"]: (r["rows"], r["errors"], r["first_id"], r["last_id"]) for r in summaries.to_pylist()} == {
        0: (2, 1, "a", "c"), 1: (2, 0, "d", "e")}
    assert pq.read_table(out / "shards" / "part-00000.parquet").column("id").to_pylist() == ["a", "b"]
    assert pq.read_table(out / "errors" / "part-00000.parquet").column("id").to_pylist() == ["c"]
    assert not (out / "errors" / "part-00001.parquet").exists()
    assert read_metadata(str(out / "shards" / "part-00001.parquet"))["shard"] == "1"


def test_parquet_inputs_are_read_by_row_position(tmp_path):
    from sddr_pipeline.pipelines.runner import shard_tasks
    from sddr_pipeline.pipelines.stage import read_shard, unpack_rows
    from sddr_pipeline.shards import ShardPlan

    names = [f"im{i}" for i in range(7)]
    write_images(tmp_path / "png", names)
    data = {n: (tmp_path / "png" / f"{n}.png").read_bytes() for n in names}
    order = [3, 0, 6, 1]  # files not in id order, several row groups each
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [names[i] for i in order], "image": [data[names[i]] for i in order]}),
                   tmp_path / "in" / "a.parquet", row_group_size=2)
    pq.write_table(pa.table({"id": ["im5", "im2", "im4"], "image": [data["im5"], data["im2"], data["im4"]],
                             "source": ["s5", "s2", "s4"]}), tmp_path / "in" / "b.parquet", row_group_size=1)
    inputs = list_inputs(str(tmp_path / "in"))
    assert inputs.kind == "parquet" and inputs.rows["im6"] == 2 and inputs.rows["im4"] == 2
    plan = ShardPlan(inputs.ids, 4)
    read = read_shard(pa.concat_tables(shard_tasks(inputs, plan, [0, 1])), parquet=True, attempts=1)
    shards = [unpack_rows(cell) for cell in read.column("inputs")]
    assert [t.column("id").to_pylist() for t in shards] == [names[:4], names[4:]]
    for table in shards:
        for row in table.to_pylist():
            assert row["image"] == data[row["id"]] and row["read_error"] is None
    assert shards[1].column("source").to_pylist() == ["s4", "s5", str(tmp_path / "in" / "a.parquet")]
    pq.write_table(pa.table({"id": ["im5", "zz", "im4"], "image": [data["im5"], b"", data["im4"]]}),
                   tmp_path / "in" / "b.parquet")  # changed since it was listed
    read = read_shard(pa.concat_tables(shard_tasks(inputs, plan, [0])), parquet=True, attempts=1)
    errors = {r["id"]: r["read_error"] for r in unpack_rows(read.column("inputs")[0]).to_pylist()}
    assert errors == {"im0": None, "im1": None, "im3": None, "im2": errors["im2"]}
    assert errors["im2"].startswith("InputError: row 1 of ") and "holds id 'zz', not 'im2': the input changed" in errors["im2"]


# ------------------------------------------------------------------------ Ray end to end


def test_refine_folder_on_the_gpu_path_with_bad_inputs(tmp_path, weights, ray_cluster):
    names = ["a", "sub/b", "sub/deeper/c", "we ird ü", "e"]
    pixels = write_images(tmp_path / "in", names)
    write_poison(tmp_path / "in" / "poison.png")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    spec = write_predictor(tmp_path / "mods")
    out = tmp_path / "out"
    report, lines = run_refine(ray_cluster, tmp_path / "in", out, spec, weights, max_failed_share=0.5,
                               include_image=True, save_predictions=True)
    assert report.resources["gpus_per_actor"] == 1.0 and report.resources["actors"] == 1  # GPU-pinned, ran on CPU
    assert (report.rows_written, report.rows_failed, sorted(report.shards_written)) == (5, 3, [0, 1, 2])
    assert any("8/8 rows" in line for line in lines) and any("img/s" in line for line in lines)
    done, _ = assert_exactly_once(out, set(names) | {"poison", "broken", "empty"})
    errors = {r["id"]: r["stage"] for r in read_errors(str(out)).to_pylist()}
    assert errors == {"poison": "predict", "broken": "decode", "empty": "decode"}
    table = read_shards(str(out))
    rows = {r["id"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(names) == sorted(done)
    for name in names:
        assert decode_depth(rows[name]).shape == SIZE and decode_array(rows[name]["high"]).shape == (48, 64)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(rows[name]["image"]))), pixels[name])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 8, "done": 5, "failed": 3, "pending": 0, "shards_completed": 3}
    assert manifest["versions"]["refiner"].startswith("sddr-small@") and manifest["runs"][-1]["status"] == "completed"
    meta = read_metadata(str(out / "shards" / "part-00000.parquet"))
    assert meta["kind"] == "depth" and meta["refiner"] == manifest["versions"]["refiner"] and meta["config"]["batch_size"] == 2
    rerun, _ = run_refine(ray_cluster, tmp_path / "in", out, spec, weights, max_failed_share=0.5,
                          include_image=True, save_predictions=True)
    assert rerun.shards_skipped == 3 and rerun.rows_written == 0 and rerun.resources is None  # nothing started


def test_the_driver_receives_shard_summaries_never_maps(tmp_path, weights, ray_cluster, monkeypatch):
    from sddr_pipeline.pipelines import runner
    from sddr_pipeline.shards.writer import SUMMARY_SCHEMA

    received: list[pa.Table] = []
    add = runner.ShardCollector.add
    monkeypatch.setattr(runner.ShardCollector, "add", lambda self, table: (received.append(table), add(self, table))[1])
    names = [f"m{i}" for i in range(5)]
    write_images(tmp_path / "in", names)
    out = tmp_path / "out"
    report, lines = run_refine(ray_cluster, tmp_path / "in", out, write_predictor(tmp_path / "mods"), weights,
                               gpus_per_actor=0, actors=1, cpus_per_actor=0.5, rows_per_shard=2, include_image=True,
                               save_predictions=True)
    assert (report.rows_written, sorted(report.shards_written)) == (5, [0, 1, 2])
    assert received and all(t.schema.equals(SUMMARY_SCHEMA) for t in received)  # everything the driver got
    assert sorted(r["shard"] for t in received for r in t.to_pylist()) == [0, 1, 2]
    on_disk = sum(p.stat().st_size for p in (out / "shards").iterdir())
    assert max(t.nbytes for t in received) < 1024 and on_disk > 50 * sum(t.nbytes for t in received)
    assert any("5/5 rows" in line for line in lines)
    assert_exactly_once(out, set(names))


def test_rows_done_reach_the_driver_before_their_shard_is_complete(tmp_path, weights, ray_cluster):
    names = [f"p{i}" for i in range(6)]
    write_images(tmp_path / "in", names)
    report, lines = run_refine(ray_cluster, tmp_path / "in", tmp_path / "out", write_predictor(tmp_path / "mods", delay=0.4),
                               weights, gpus_per_actor=0, actors=1, cpus_per_actor=0.5, batch_size=1, rows_per_shard=6)
    assert report.shards_written == [0] and report.first_result_seconds < report.seconds
    partial = [line for line in lines if "0/1 shards" in line and "/6 rows" in line and " 0/6 rows" not in line]
    assert partial, lines  # the actor reports each model call; the watchdog beats on these too


@pytest.mark.slow
def test_dataset_with_ground_truth_resumes_only_missing_shards(tmp_path, weights, ray_cluster):
    from sddr_pipeline.data import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", count=6, height=SIZE[0], width=SIZE[1], seed=5)
    out = tmp_path / "out"
    cpu = {"gpus_per_actor": 0, "actors": 1, "cpus_per_actor": 0.5, "rows_per_shard": 2}
    first, _ = run_refine(ray_cluster, data, out, "simulated", weights, **cpu)
    assert first.rows_written == 6 and first.resources["gpus_per_actor"] == 0
    before = read_shards(str(out)).to_pylist()
    (out / "shards" / "part-00001.parquet").unlink()
    (out / "shards" / ".tmp-0123abcd-part-00002.parquet.partial").write_bytes(b"half written")
    second, _ = run_refine(ray_cluster, data, out, "simulated", weights, **cpu)
    assert second.shards_written == [1] and second.shards_skipped == 2 and second.rows_written == 2
    assert_exactly_once(out, {f"{i:05d}" for i in range(6)})
    after = {r["id"]: r for r in read_shards(str(out)).to_pylist()}
    for row in before:  # the simulated predictor is deterministic: the redone shard matches
        assert np.allclose(decode_depth(after[row["id"]]), decode_depth(row), rtol=1e-5, atol=1e-6)
    with pytest.raises(LayoutError, match="other settings.*mode"):
        run_refine(ray_cluster, data, out, "simulated", weights, mode="two-stage", **cpu)


@pytest.mark.slow
def test_killed_actor_loses_and_duplicates_nothing(tmp_path, weights, ray_cluster):
    names = [f"img{i:02d}" for i in range(6)]
    write_images(tmp_path / "in", names)
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = write_predictor(tmp_path / "mods", delay=0.25, pid_dir=pids)
    killed: list[int] = []

    def kill_first_actor():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not killed:
            found = [int(p.name) for p in pids.iterdir()]
            if found:
                time.sleep(0.5)
                os.kill(found[0], signal.SIGKILL)
                killed.append(found[0])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_actor, daemon=True)
    killer.start()
    out = tmp_path / "out"
    settings = {"gpus_per_actor": 0, "actors": 2, "cpus_per_actor": 0.5, "batch_size": 1, "rows_per_shard": 3}
    try:
        first, _ = run_refine(ray_cluster, tmp_path / "in", out, spec, weights, **settings)
        first_ok = True
    except PipelineError:
        first_ok = False
    killer.join(5)
    assert killed, "no actor was killed"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    if first_ok:  # Ray restarted the actor and retried its batch within the run
        assert_exactly_once(out, set(names))
    rerun, _ = run_refine(ray_cluster, tmp_path / "in", out, spec, weights, **settings)
    if first_ok:
        assert first.rows_written == len(names) and rerun.shards_written == []
    assert_exactly_once(out, set(names))
    assert read_shards(str(out)).num_rows == len(names)


def test_refine_pipeline_confidence_column(tmp_path, weights, ray_cluster):
    names = ["a", "b"]
    write_images(tmp_path / "in", names)
    spec = write_predictor(tmp_path / "mods")
    out = tmp_path / "out"
    cpu = {"gpus_per_actor": 0, "actors": 1, "cpus_per_actor": 0.5}
    report, _ = run_refine(ray_cluster, tmp_path / "in", out, spec, weights, confidence=True, **cpu)
    assert report.rows_written == 2
    frame = pd.read_parquet(out / "shards")  # plain pandas
    for _, row in frame.iterrows():
        conf = decode_confidence(row)
        assert conf.dtype == np.float32 and conf.shape == decode_depth(row).shape == SIZE
        assert conf.min() >= 0 and conf.max() <= 1
    assert read_metadata(str(out / "shards" / "part-00000.parquet"))["config"]["confidence"] is True
    with pytest.raises(LayoutError, match="other settings.*confidence"):
        run_refine(ray_cluster, tmp_path / "in", out, spec, weights, **cpu)


def test_pseudolabel_pipeline_writes_training_shards(tmp_path, weights, ray_cluster):
    from sddr_pipeline.pipelines.pseudolabel import run_pseudolabel_pipeline

    names = ["p", "q", "r"]
    pixels = write_images(tmp_path / "in", names)
    images = [{"bytes": (tmp_path / "in" / f"{n}.png").read_bytes(), "path": f"{n}.png"} for n in names]
    pq.write_table(pa.table({"id": names, "image": images}), tmp_path / "images.parquet")  # HuggingFace-style image column
    out = tmp_path / "out"
    report = run_pseudolabel_pipeline(str(tmp_path / "images.parquet"), str(out), write_predictor(tmp_path / "mods"), weights, steps=1,
                                      gpus_per_actor=0, actors=1, cpus_per_actor=0.5, batch_size=2, rows_per_shard=2,
                                      regions=4, stall_timeout_s=90.0, progress=None, **RES)
    assert report.rows_written == 3
    assert_exactly_once(out, set(names))
    assert read_metadata(str(out / "shards" / "part-00000.parquet"))["kind"] == "training"
    for row in read_shards(str(out)).to_pylist():
        assert decode_regions(row).shape == (4, *SIZE)
        assert decode_array(row["gs"]).shape == SIZE and row["scale_source"] == "normalized"
        image = np.asarray(Image.open(io.BytesIO(row["image"])))
        assert np.array_equal(image, pixels[row["id"]])


def test_watchdog_fires_even_when_sigint_is_ignored():
    """A driver run in the background (nohup, `&`) inherits an ignored SIGINT."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _assert_watchdog_fires_on_a_stall()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
