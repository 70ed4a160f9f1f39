"""End-to-end `sddr refine` on real components: the synthetic generator, the simulated and
python predictors, a real (randomly initialised, saved and reloaded) refiner."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sddr_pipeline import load_depth
from sddr_pipeline.cli.main import main
from sddr_pipeline.data import write_synthetic_dataset
from sddr_pipeline.io import read_png16
from sddr_pipeline.io.lock import LOCK_NAME, output_lock
from sddr_pipeline.models import Refiner

SIM = "simulated:low=48,high=96"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights") / "small"
    Refiner.from_config("sddr-small", seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synth", count=2, height=72, width=96, seed=3)


@pytest.fixture()
def images_folder(tmp_path, dataset):
    """A plain folder of images: two good ones, then bad files of several kinds."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((dataset / "rgb").iterdir()):
        (folder / p.name).write_bytes(p.read_bytes())
    good = sorted(folder.iterdir())[0].read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_bytes(b"this is not an image at all")
    return folder


@pytest.fixture()
def flat_predictor(tmp_path, monkeypatch):
    """A python: predictor module whose outputs are smooth, constant or NaN-filled."""
    (tmp_path / "toy_predictors.py").write_text(textwrap.dedent(
        """
        import numpy as np

        def smooth(image):
            h, w = image.shape[:2]
            return np.add.outer(np.arange(h), np.arange(w)).astype(np.float32) + 1.0

        def constant(image):
            return np.full(image.shape[:2], 3.0, np.float32)

        def nans(image):
            return np.full(image.shape[:2], np.nan, np.float32)

        def infs(image):
            return np.full(image.shape[:2], np.inf, np.float32)

        def zeros(image):
            return np.zeros(image.shape[:2], np.float32)

        def complex_map(image):
            return smooth(image) * (1 + 1j)

        def negative(image):
            return -smooth(image)

        def exits(image):
            raise SystemExit(3)
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "python:toy_predictors"


def test_refine_one_stage_outputs_and_manifest(tmp_path, dataset, weights):
    out = tmp_path / "out"
    rc = main(["refine", str(dataset), str(out), "--predictor", SIM, "--weights", str(weights), "--quiet", "--save-predictions"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "one-stage" and manifest["predictor"]["spec"] == SIM
    assert manifest["refiner"]["version"].startswith("sddr-small")
    names = sorted(manifest["images"])
    assert len(names) == 2 and manifest["counts"]["done"] == 2
    for name in names:
        entry = manifest["images"][name]
        depth = np.load(out / entry["outputs"]["depth_npy"])
        assert depth.shape == (72, 96) and depth.dtype == np.float32 and np.isfinite(depth).all()
        assert entry["space"] == "disparity" and entry["metric"] is False
        png = read_png16(out / entry["outputs"]["depth_png"])
        assert np.max(np.abs(png - depth)) <= entry["png16"]["scale"]
        assert (out / entry["outputs"]["preview"]).is_file()
        low = np.load(out / entry["outputs"]["low"])
        high = np.load(out / entry["outputs"]["high"])
        assert max(low.shape) == 48 and max(high.shape) == 96
    loaded = load_depth(out, names[0])
    assert np.array_equal(loaded.depth, np.load(out / manifest["images"][names[0]]["outputs"]["depth_npy"]))


def test_refine_two_stage(tmp_path, dataset, weights):
    out = tmp_path / "out2"
    rc = main(["refine", str(dataset), str(out), "--predictor", SIM, "--weights", str(weights), "--mode", "two-stage", "--quiet"])
    assert rc == 0
    maps = load_depth(out)
    assert len(maps) == 2
    for m in maps.values():
        assert m.depth.shape == (72, 96) and np.isfinite(m.depth).all()
        assert m.entry["timings_s"]["refine_windows"] > 0


def test_range_clamp_flag_is_recorded_and_changes_the_maps(tmp_path, dataset, weights, capsys):
    args = ["--predictor", SIM, "--weights", str(weights), "--quiet"]
    assert main(["refine", str(dataset), str(tmp_path / "clamped"), *args, "--range-clamp", "0.0078125"]) == 0
    assert main(["refine", str(dataset), str(tmp_path / "raw"), *args]) == 0  # the gated preset's own: none
    assert main(["refine", str(dataset), str(tmp_path / "two"), *args, "--mode", "two-stage", "--range-clamp", "0.02"]) == 0
    clamped = json.loads((tmp_path / "clamped" / "manifest.json").read_text())
    raw = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert clamped["range_clamp"] == 1 / 128 and raw["range_clamp"] == 0 and two["two_stage"]["range_clamp"] == 0.02
    a, b = load_depth(tmp_path / "clamped"), load_depth(tmp_path / "raw")
    assert any(not np.array_equal(a[k].depth, b[k].depth) for k in a)
    with pytest.raises(SystemExit):
        main(["refine", str(dataset), str(tmp_path / "bad"), *args, "--range-clamp", "0.5"])
    assert "range_clamp must be in [0, 0.25]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_window_median_flag_is_recorded_and_checked(tmp_path, dataset, weights, capsys):
    args = ["--predictor", SIM, "--weights", str(weights), "--quiet", "--mode", "two-stage"]
    assert main(["refine", str(dataset), str(tmp_path / "default"), *args]) == 0
    assert main(["refine", str(dataset), str(tmp_path / "off"), *args, "--window-median", "1"]) == 0
    default = json.loads((tmp_path / "default" / "manifest.json").read_text())
    off = json.loads((tmp_path / "off" / "manifest.json").read_text())
    assert default["two_stage"]["window_median"] == 7 and off["two_stage"]["window_median"] == 1
    assert main(["refine", str(dataset), str(tmp_path / "even"), *args, "--window-median", "4"]) == 2
    assert "window_median must be an odd integer between 1 and 15, got 4" in capsys.readouterr().err
    assert not (tmp_path / "even").exists()


def test_existing_output_refused_then_resumed(tmp_path, dataset, weights, capsys):
    out = tmp_path / "out"
    args = ["refine", str(dataset), str(out), "--predictor", SIM, "--weights", str(weights), "--quiet"]
    assert main(args) == 0
    before = {p: p.stat().st_mtime_ns for p in (out / "depth").iterdir()}
    assert main(args) == 1
    assert "--skip-existing" in capsys.readouterr().err
    (out / "depth" / ".tmp-dead-x.npy").write_bytes(b"half")
    assert main(args + ["--skip-existing"]) == 0
    assert "0 refined, 2 skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "depth").iterdir()} == before
    # a different configuration must not be mixed into the same folder
    assert main(args + ["--skip-existing", "--mode", "two-stage"]) == 1
    assert "other settings (mode: 'one-stage' -> 'two-stage';" in capsys.readouterr().err


def test_bad_images_skip_and_fail(tmp_path, images_folder, weights, flat_predictor, capsys):
    spec = flat_predictor + ":smooth"
    out = tmp_path / "skip"
    rc = main(["refine", str(images_folder), str(out), "--predictor", spec, "--weights", str(weights), "--on-error", "skip", "--quiet", "--low-res", "32", "--high-res", "64"])
    assert rc == 1
    err = capsys.readouterr().err
    for bad in ("truncated", "empty", "notes"):
        assert bad in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["done"] == 2 and manifest["counts"]["failed"] == 3
    assert {e["name"] for e in manifest["errors"]} == {"truncated", "empty", "notes"}
    assert not list(out.rglob(".tmp-*"))
    out2 = tmp_path / "fail"
    rc = main(["refine", str(images_folder), str(out2), "--predictor", spec, "--weights", str(weights), "--quiet", "--low-res", "32", "--high-res", "64"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "empty.jpg" in err and "--on-error skip" in err


@pytest.mark.parametrize(("fn", "options", "reason"), [
    ("constant", "", "returned a constant map (3 at every finite pixel); it holds no depth"),
    ("zeros", "", "returned a constant map (0 at every finite pixel); it holds no depth"),
    ("nans", "", "returned no finite value (all 768 pixels are NaN or inf)"),
    ("infs", "", "returned no finite value (all 768 pixels are NaN or inf)"),
    ("complex_map", "", "returned complex values (complex64); a depth map must be real"),
    ("negative", ";metric=true", "returned negative metric disparity (min -"),
    ("negative", ";kind=depth", "returned a depth map with no positive value (max -"),
    ("exits", "", "failed: SystemExit: 3"),
])
def test_garbage_predictions_are_named_per_image_errors(tmp_path, dataset, weights, flat_predictor, fn, options, reason,
                                                         capsys):
    spec = f"{flat_predictor}:{fn}{options}"
    args = ["--predictor", spec, "--weights", str(weights), "--quiet", "--low-res", "32", "--high-res", "64"]
    rc = main(["refine", str(dataset / "rgb"), str(tmp_path / "fail"), *args])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{sorted((dataset / 'rgb').iterdir())[0]}: refine failed: PredictorError: " in err
    assert f"python:toy_predictors:{fn}@" in err
    assert reason in err and "--on-error skip" in err
    rc = main(["refine", str(dataset / "rgb"), str(tmp_path / "skip"), *args, "--on-error", "skip"])
    assert rc == 1
    manifest = json.loads((tmp_path / "skip" / "manifest.json").read_text())
    assert manifest["counts"]["done"] == 0 and manifest["counts"]["failed"] == 2
    assert all(reason in e["reason"] and e["stage"] == "refine" for e in manifest["errors"])
    assert not list((tmp_path / "skip").rglob("*.npy"))


def test_relative_disparity_may_be_negative(tmp_path, dataset, weights, flat_predictor):
    out = tmp_path / "o"
    rc = main(["refine", str(dataset / "rgb"), str(out), "--predictor", f"{flat_predictor}:negative", "--weights",
               str(weights), "--quiet", "--low-res", "32", "--high-res", "64"])
    assert rc == 0
    for m in load_depth(out).values():
        assert np.isfinite(m.depth).all()


def test_non_finite_weights_are_refused_naming_the_file(tmp_path, dataset, weights, capsys):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((weights / "config.json").read_bytes())
    state = load_file(str(weights / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][...] = float("nan")
    save_file(state, str(bad / "model.safetensors"))
    rc = main(["refine", str(dataset), str(tmp_path / "o"), "--predictor", SIM, "--weights", str(bad), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{bad / 'model.safetensors'}: weights hold NaN or inf values (in ['{name}'" in err
    assert not (tmp_path / "o").exists()


def test_non_finite_refined_maps_are_per_image_errors(tmp_path, dataset, weights):
    import torch

    from sddr_pipeline.batch import RefineJobError, refine_folder
    from sddr_pipeline.predictors import get_predictor

    refiner = Refiner.from_pretrained(weights)
    with torch.no_grad():
        for p in refiner.net.parameters():
            p.fill_(float("nan"))
    predictor = get_predictor(SIM)
    report = refine_folder(dataset, tmp_path / "skip", predictor, refiner, on_error="skip", progress=False,
                           low_res=48, high_res=96)
    assert not report.done and len(report.failed) == 2
    for reason in report.failed.values():
        assert reason.startswith("NonFiniteResultError: refinement gave non-finite pixels (depth 6912 of 6912")
    assert not list((tmp_path / "skip").rglob("*.npy"))
    with pytest.raises(RefineJobError, match="refine failed: NonFiniteResultError"):
        refine_folder(dataset, tmp_path / "fail", predictor, refiner, progress=False, low_res=48, high_res=96)


def test_default_weights_are_used_by_default(tmp_path, dataset):
    rc = main(["refine", str(dataset), str(tmp_path / "o"), "--predictor", SIM, "--quiet"])
    assert rc == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["refiner"]["version"] == Refiner.from_pretrained("default").version


def test_missing_default_weights_fail_with_hint(tmp_path, dataset, capsys, monkeypatch):
    monkeypatch.setattr("sddr_pipeline.models.refiner.DEFAULT_WEIGHTS_DIR", tmp_path / "gone")
    rc = main(["refine", str(dataset), str(tmp_path / "o"), "--predictor", SIM, "--quiet"])
    assert rc == 2
    assert "--weights" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_input_and_bad_spec(tmp_path, weights, capsys):
    assert main(["refine", str(tmp_path / "nope"), str(tmp_path / "o"), "--predictor", SIM, "--weights", str(weights), "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["refine", str(tmp_path), str(tmp_path / "o"), "--predictor", "simulated:cons=9", "--weights", str(weights), "--quiet"]) == 2
    assert "cons" in capsys.readouterr().err


def test_confidence_next_to_depth_and_resume(tmp_path, dataset, weights, capsys):
    out = tmp_path / "conf"
    args = ["refine", str(dataset), str(out), "--predictor", SIM, "--weights", str(weights), "--quiet"]
    assert main(args) == 0
    assert not (out / "confidence").exists()  # off by default
    manifest = json.loads((out / "manifest.json").read_text())
    assert "confidence" not in manifest["outputs"]
    # resuming with --confidence redoes the images that have no confidence file yet
    assert main(args + ["--skip-existing", "--confidence"]) == 0
    assert "2 refined, 0 skipped" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert "confidence/<name>.npy" in manifest["outputs"]["confidence"]
    for name, entry in manifest["images"].items():
        assert entry["outputs"]["confidence"] == f"confidence/{name}.npy"
        conf = np.load(out / entry["outputs"]["confidence"])
        depth = np.load(out / entry["outputs"]["depth_npy"])
        assert conf.dtype == np.float32 and conf.shape == depth.shape == (72, 96)
        assert conf.min() >= 0 and conf.max() <= 1 and conf.max() > 0
        assert "confidence" in entry["timings_s"]
    assert not list(out.rglob(".tmp-*"))
    assert main(args + ["--skip-existing", "--confidence"]) == 0
    assert "0 refined, 2 skipped" in capsys.readouterr().out
    first = sorted(manifest["images"])[0]
    (out / "confidence" / f"{first}.npy").unlink()
    assert main(args + ["--skip-existing", "--confidence"]) == 0
    assert "1 refined, 1 skipped" in capsys.readouterr().out
    assert (out / "confidence" / f"{first}.npy").is_file()
    assert main(args + ["--skip-existing"]) == 0  # without --confidence a missing file is not needed
    assert "0 refined, 2 skipped" in capsys.readouterr().out


def test_confidence_python_api(tmp_path, dataset):
    from sddr_pipeline.batch import refine_folder
    from sddr_pipeline.predictors import get_predictor

    report = refine_folder(dataset, tmp_path / "o", get_predictor(SIM), Refiner.from_pretrained("default"), confidence=True,
                           progress=False)
    assert report.ok and len(report.done) == 2
    for name in report.done:
        conf = np.load(tmp_path / "o" / "confidence" / f"{name}.npy")
        assert conf.shape == (72, 96) and 0 <= conf.min() <= conf.max() <= 1


def test_scale_points_make_metric_maps_from_sensor_depth(tmp_path, shared_data, capsys):
    """--scale-points: metric maps from sparse pixels of each frame's own depth (the RGB-D
    sample's exact depth here), close to that depth everywhere else too."""
    from sddr_pipeline.data import open_dataset

    out = tmp_path / "rgbd"
    src = shared_data / "rgbd_sequence_sample"
    assert main(["refine", str(src), str(out), "--predictor", "simulated", "--scale-points", "300", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scale_points"] == 300
    for sample in list(open_dataset(src))[:2]:
        entry = next(e for e in manifest["images"].values() if e["input"] == str(sample.image_path))
        assert entry["metric"] is True and entry["scale_source"] == "reference"
        depth = np.load(out / entry["outputs"]["depth_npy"])
        valid = sample.gt > 0
        assert np.median(np.abs(depth[valid] - sample.gt[valid]) / sample.gt[valid]) < 0.03


def test_scale_points_refuse_images_without_metric_depth(tmp_path, images_folder, weights, flat_predictor, capsys):
    code = main(["refine", str(images_folder), str(tmp_path / "o"), "--predictor", f"{flat_predictor}:smooth",
                 "--weights", str(weights), "--scale-points", "50", "--quiet"])
    assert code == 1
    assert capsys.readouterr().err == (  # once, up front, with the fix; OUTPUT untouched
        f"sddr refine: --scale-points needs each image's metric depth, but none of the 5 image(s) of {images_folder} "
        "(layout images) has a depth map: give the images their RGB-D / LiDAR depth (a dataset folder with depth "
        "ground truth, e.g. the generic layout's rgb/ + gt/, NYU, KITTI, rgbd_sequence), or drop --scale-points "
        "to write relative maps\n"
    )
    assert not (tmp_path / "o").exists()


def _outputs_state(out):
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for d in ("depth", "preview")
            for p in sorted((out / d).iterdir())}


def test_resume_redoes_changed_inputs(tmp_path, weights, capsys):
    # issue 13 item 4: --skip-existing matched by name only and kept stale maps
    from PIL import Image

    src = write_synthetic_dataset(tmp_path / "synth", count=3, height=72, width=96, seed=3)
    out = tmp_path / "out"
    args = ["refine", str(src), str(out), "--predictor", SIM, "--weights", str(weights), "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    before = _outputs_state(out)
    old = json.loads((out / "manifest.json").read_text())["images"]
    changed = src / "rgb" / "00001.png"
    Image.fromarray(np.asarray(Image.open(changed))[:, ::-1].copy()).save(changed)
    assert main(args + ["--skip-existing"]) == 0
    assert "1 refined, 2 skipped" in capsys.readouterr().out
    after = _outputs_state(out)
    redone = {k for k in before if before[k] != after[k]}
    assert redone == {"depth/00001.npy", "depth/00001.png", "preview/00001.png"}
    images = json.loads((out / "manifest.json").read_text())["images"]
    assert images["00001"]["fingerprint"]["sha256"] != old["00001"]["fingerprint"]["sha256"]
    assert images["00001"]["fingerprint"]["size"] == changed.stat().st_size
    assert images["00000"]["fingerprint"] == old["00000"]["fingerprint"]
    # the README's main command with another seed rewrites every scene: all are redone
    write_synthetic_dataset(src, count=3, height=72, width=96, seed=2000, overwrite=True)
    assert main(args + ["--skip-existing"]) == 0
    assert "3 refined, 0 skipped" in capsys.readouterr().out


def test_resume_refuses_an_output_of_another_input(tmp_path, dataset, weights, capsys):
    # issue 13 item 4: a resumed OUTPUT from another INPUT was accepted and its manifest rewritten
    src = tmp_path / "synth"
    shutil.copytree(dataset, src)
    out = tmp_path / "out"
    assert main(["refine", str(src), str(out), "--predictor", SIM, "--weights", str(weights), "--quiet"]) == 0
    other = tmp_path / "other"
    shutil.copytree(src, other)
    manifest = (out / "manifest.json").read_bytes()
    assert main(["refine", str(other), str(out), "--predictor", SIM, "--weights", str(weights), "--quiet", "--skip-existing"]) == 1
    err = capsys.readouterr().err
    assert f"cannot resume {out}: it was made from input {src.resolve()}, not {other.resolve()}" in err
    assert (out / "manifest.json").read_bytes() == manifest


def test_refine_refuses_an_output_held_by_another_run(tmp_path, dataset, weights, capsys):
    # issue 13 item 5: two runs on one OUTPUT both succeeded and lost manifest updates
    out = tmp_path / "out"
    args = ["refine", str(dataset), str(out), "--predictor", SIM, "--weights", str(weights), "--quiet"]
    with output_lock(out):
        assert main(args) == 1
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # the refused run wrote nothing
    err = capsys.readouterr().err
    assert f"output {out} is in use by another run (pid {os.getpid()} on {socket.gethostname()}" in err
    # a lock left by a dead run is taken over; the lock is gone when the run ends
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname()}))
    assert main(args) == 0
    assert not (out / LOCK_NAME).exists()
    # and released when the run stops on an error
    assert main(args + ["--skip-existing", "--mode", "two-stage"]) == 1
    assert "other settings (mode: 'one-stage' -> 'two-stage';" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists()
