"""Plugins as nerfstudio does them (issue 16): integrations are typed specs, built-ins and
third-party ones alike come through one registry, and a package that is merely installed
(a ``*.dist-info/entry_points.txt`` on the path) adds an ``sddr`` sub-command and a predictor."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sddr_pipeline.integrations import IntegrationSpec, add_arguments, integration_specs
from sddr_pipeline.registry import INTEGRATIONS, Registry, RegistryError

BUILTIN_COMMANDS = ["pointcloud", "fuse", "colmap", "nerf", "capture-sample"]

FAKE_MODULE = '''
"""A third-party package with one integration and one predictor."""
import numpy as np

from sddr_pipeline.integrations import IntegrationSpec
from sddr_pipeline.predictors import BasePredictor, OutputKind


def add_arguments(parser):
    parser.add_argument("--word", default="hello", help="what to say")
    parser.set_defaults(func=run)


def run(args):
    print(f"fake-tool says {args.word}")
    return 3


SPEC = IntegrationSpec("fake-tool", "a third-party integration for the tests", "fake_sddr_ext:add_arguments")
NOT_A_SPEC = "oops"


class Ramp(BasePredictor):
    name = "ramp"
    kind = OutputKind("depth", metric=True)

    def predict(self, image, resolution, context=None):
        return np.linspace(1.0, 2.0, resolution * resolution, dtype=np.float32).reshape(resolution, resolution)


def from_spec(spec, device):
    return Ramp()
'''

ENTRY_POINTS = """
[sddr_pipeline.integrations]
fake-tool = fake_sddr_ext:SPEC
colmap = sddr_pipeline.plugins:COLMAP
broken = no_such_module_anywhere:SPEC
wrong-type = fake_sddr_ext:NOT_A_SPEC

[sddr_pipeline.predictors]
fakepred = fake_sddr_ext:from_spec
simulated = fake_sddr_ext:from_spec
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder that looks like site-packages holding the installed package ``fake-sddr-ext``.
    Besides its own entry points it repeats one built-in integration (as the package's own
    fresh metadata does), claims a built-in predictor name, and has two broken ones."""
    root = tmp_path_factory.mktemp("site")
    (root / "fake_sddr_ext.py").write_text(FAKE_MODULE)
    info = root / "fake_sddr_ext-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-sddr-ext\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


def sddr(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "sddr_pipeline.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_builtin_integrations_are_specs_in_help_order():
    specs = integration_specs()
    assert all(isinstance(spec, IntegrationSpec) for spec in specs)
    assert [spec.name for spec in specs][:5] == BUILTIN_COMMANDS
    assert INTEGRATIONS.get("colmap").add_arguments == "sddr_pipeline.plugins.colmap:add_arguments"


def test_help_lists_a_third_party_integration_and_its_sub_command_runs(site):
    out = sddr(site, "--help")
    assert out.returncode == 0, out.stderr
    assert "a third-party integration for the tests" in out.stdout
    for name in [*BUILTIN_COMMANDS, "fake-tool"]:
        assert f"    {name} " in out.stdout
    # the entry point repeating a built-in is silent; broken ones are skipped, named
    assert "colmap" not in out.stderr
    assert "'broken' is skipped: it failed to load (ModuleNotFoundError" in out.stderr
    assert "'wrong-type' is skipped: it is a str" in out.stderr
    assert "--word" in sddr(site, "fake-tool", "--help").stdout
    run = sddr(site, "fake-tool", "--word", "hi")
    assert (run.returncode, run.stdout.strip()) == (3, "fake-tool says hi")


def test_predictors_lists_a_third_party_predictor_and_it_predicts(site):
    out = sddr(site, "predictors")
    assert out.returncode == 0, out.stderr
    assert {"fakepred", "hf", "onnx", "python", "simulated", "torchscript"} <= set(out.stdout.split())
    assert "simulated = 'fake_sddr_ext:from_spec' of group 'sddr_pipeline.predictors' is ignored" in out.stderr
    code = "import numpy as np, sddr_pipeline as s; print(s.get_predictor('fakepred').predict(np.zeros((4, 4, 3), np.uint8), 8).shape)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.stdout.strip() == "(8, 8)", run.stderr


def test_help_imports_no_integration_or_heavy_module():
    code = textwrap.dedent("""
        import sys
        from sddr_pipeline.cli.main import build_parser
        build_parser().format_help()
        print(" ".join(m for m in sys.modules if m in ("torch", "numpy", "open3d", "pycolmap", "ray", "pyarrow")
                       or m.startswith("sddr_pipeline.plugins.")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_add_arguments_completes_a_sub_command_on_first_use():
    parser = argparse.ArgumentParser(prog="sddr")
    subparsers = parser.add_subparsers(dest="command")
    add_arguments(subparsers)
    args = parser.parse_args(["nerf", "t.json", "depth", "--format", "3dgs"])
    assert (args.command, args.format, args.func.__module__) == ("nerf", "3dgs", "sddr_pipeline.plugins.nerf")
    capture = subparsers.choices["capture-sample"]
    assert capture.prog == "sddr capture-sample" and "--points" in capture.format_help()


def test_registry_decorator_and_repeated_registration():
    reg: Registry = Registry("sddr_pipeline.test_none", "thing")

    @reg.register("f")
    def f() -> int:
        return 1

    assert reg.get("f") is f
    reg.register("f", f)  # the same object again (a module imported twice): a no-op
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("f", lambda: 2)
    reg.register("f", "math:sqrt", override=True)
    assert reg.get("f")(9.0) == 3.0
