"""How misuse of outputs is refused (issue 13): relative maps refused by name of the fix
(``--scale-points``)."""
from __future__ import annotations

import json

import pytest

from sddr_pipeline.cli.main import main
from test_safe_names import fake_refine_output


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
