"""What outputs record and how misuse is refused (issue 13): the resolutions a refine
actually used, relative maps refused by name of the fix (``--scale-points``)."""
from __future__ import annotations

import json

import pytest

from sddr_pipeline.cli.main import main
from sddr_pipeline.data import write_synthetic_dataset
from test_safe_names import fake_refine_output


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("flags, expected", [
    ([], {"low": 48, "high": 96}),  # the predictor's defaults, not null
    (["--low-res", "40"], {"low": 40, "high": 96}),
])
def test_manifest_records_the_resolutions_used(tmp_path, flags, expected):
    data = write_synthetic_dataset(tmp_path / "synth", count=1, height=48, width=64, seed=1)
    out = tmp_path / "out"
    assert main(["refine", str(data), str(out), "--predictor", "simulated:low=48,high=96", "--weights", "default",
                 "--quiet", *flags]) == 0
    assert json.loads((out / "manifest.json").read_text())["resolutions"] == expected


def test_refine_refuses_low_above_high_as_a_cli_error(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "synth", count=1, height=48, width=64, seed=1)
    out = tmp_path / "out"
    assert main(["refine", str(data), str(out), "--predictor", "simulated:low=48,high=96", "--low-res", "200",
                 "--quiet"]) == 1
    assert capsys.readouterr().err == "sddr refine: low resolution (200) must not exceed high resolution (96)\n"
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["pointcloud", "--output", "{tmp}/clouds", "--intrinsics", "{tmp}/intr.json"],
    ["fuse", "--output", "{tmp}/mesh.ply"],
])
def test_pointcloud_and_fuse_name_scale_points_for_relative_maps(tmp_path, capsys, command):
    src = fake_refine_output(tmp_path / "src", "img", metric=False)
    (tmp_path / "intr.json").write_text(json.dumps({"fx": 20.0, "fy": 20.0, "cx": 8.0, "cy": 6.0}))
    argv = [command[0], str(src)] + [a.format(tmp=tmp_path) for a in command[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sddr {command[0]}: {src}: 1 of 1 map(s) are RELATIVE (e.g. 'img')")
    assert "`sddr refine INPUT OUTPUT --scale-points N ...`" in err
    assert not (tmp_path / "clouds").exists() and not (tmp_path / "mesh.ply").exists()
