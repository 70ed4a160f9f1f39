"""Packaging promises: lazy heavy imports, namespaced plugins, the registry, the CLI."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sddr_pipeline.cli.main import main
from sddr_pipeline.predictors import PredictorError, PredictorSpec, get_predictor
from sddr_pipeline.registry import PREDICTORS, Registry, RegistryError


def test_import_and_refine_path_do_not_import_heavy_optional_deps():
    code = textwrap.dedent(
        """
        import sys
        import sddr_pipeline, sddr_pipeline.batch, sddr_pipeline.cli.main
        from sddr_pipeline import Refiner, get_predictor, refine, load_depth
        get_predictor("simulated")
        heavy = [m for m in ("ray", "open3d", "pycolmap", "s3fs", "onnxruntime") if m in sys.modules]
        print(",".join(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_plugins_and_pipelines_are_namespaced():
    import sddr_pipeline.pipelines
    import sddr_pipeline.plugins

    assert sddr_pipeline.plugins.__name__ == "sddr_pipeline.plugins"
    assert subprocess.run([sys.executable, "-c", "import plugins"], capture_output=True, cwd="/").returncode != 0


def test_spec_parsing():
    s = PredictorSpec.parse("python:my.mod:fn;kind=depth,metric=true")
    assert (s.name, s.arg, s.options) == ("python", "my.mod:fn", {"kind": "depth", "metric": "true"})
    s = PredictorSpec.parse("simulated")
    assert (s.name, s.arg, s.options) == ("simulated", None, {})
    with pytest.raises(PredictorError, match="key=value"):
        PredictorSpec.parse("hf:x;oops")


def test_registry_unknown_name_lists_known_ones():
    with pytest.raises(RegistryError, match="simulated"):
        get_predictor("nosuchmodel:x")
    assert {"hf", "onnx", "python", "simulated", "torchscript"} <= set(PREDICTORS.names())


def test_registry_entry_points(monkeypatch):
    from importlib.metadata import EntryPoint

    reg: Registry = Registry("sddr_pipeline.test_group", "thing")
    ep = EntryPoint(name="mine", value="sddr_pipeline.predictors.base:working_size", group="sddr_pipeline.test_group")
    monkeypatch.setattr("sddr_pipeline.registry.entry_points", lambda group: [ep] if group == reg.group else [])
    assert reg.names() == ["mine"]
    assert reg.get("mine")(10, 20, 40) == (20, 40)
    reg.register("other", lambda: 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("other", lambda: 2)


def test_cli_lists_predictors(capsys):
    assert main(["predictors"]) == 0
    assert "simulated" in capsys.readouterr().out.split()


def test_cli_lists_builtin_predictors_in_a_fresh_process():
    # this module imports sddr_pipeline.predictors (which registers the built-ins); the
    # command must list them without that, as `sddr predictors` runs
    code = "import sys; from sddr_pipeline.cli.main import main; sys.exit(main(['predictors']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert {"hf", "onnx", "python", "simulated", "torchscript"} <= set(out.stdout.split())


def test_console_script_installed():
    import shutil
    from pathlib import Path

    exe = Path(sys.executable).parent / "sddr"
    assert exe.exists() or shutil.which("sddr"), "the `sddr` console script is not installed"
    out = subprocess.run([str(exe) if exe.exists() else "sddr", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "sddr-pipeline" in out.stdout


def test_packaging_metadata_builds_without_setuptools_warnings(tmp_path):
    # issue 13: the set-up printed ~176 lines of setuptools warnings (license table, data
    # folders absent from `packages`); the build must be quiet and still ship the data files
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "src"  # a copy, so the build writes nothing into the checkout
    root.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(repo / name, root / name)
    for name in ("sddr_pipeline", "pipelines", "plugins"):
        shutil.copytree(repo / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    lib = tmp_path / "lib"
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
                         cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stdout + out.stderr, out.stdout + out.stderr
    shipped = {p.relative_to(lib).as_posix() for p in lib.rglob("*") if p.is_file() and p.suffix != ".py"}
    assert shipped == {
        "sddr_pipeline/pipelines/configs/pointcloud.yaml",
        "sddr_pipeline/pipelines/configs/pseudolabel.yaml",
        "sddr_pipeline/pipelines/configs/refine.yaml",
        "sddr_pipeline/training/recipes/default.yaml",
        "sddr_pipeline/training/recipes/default_finetune.yaml",
        "sddr_pipeline/training/recipes/long.yaml",
        "sddr_pipeline/training/recipes/quick.yaml",
        "sddr_pipeline/weights/default/MODEL_CARD.md",
        "sddr_pipeline/weights/default/config.json",
        "sddr_pipeline/weights/default/model.safetensors",
    }
