"""The refine stage inside Ray Data pipelines users write: the README example as written,
and one actor per (logical) GPU. Each runs in its own Python process with its own local
cluster, so the cluster sizes here never clash with the session cluster of the other
Ray tests; a hang fails the test (subprocess timeout)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).parent / "stage_helpers.py"
SPEC = f"python:{HELPERS}:depth"
TIMEOUT_S = 240


def readme_example() -> str:
    """The Python block that follows the ``ray-stage-example`` marker in README.md."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- ray-stage-example -->", 1)[1].split("```python\n", 1)[1]
    return block.split("```", 1)[0]


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")


def run_python(code: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HELPERS.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]


def test_readme_example_runs_as_written(tmp_path):
    write_images(tmp_path / "photos", [(48, 64), (48, 64), (40, 56)])
    code = readme_example()
    assert '"python:/abs/path/my_depth.py:depth"' in code
    run_python(code.replace("/abs/path/my_depth.py", str(HELPERS)), tmp_path)
    table = pq.read_table(tmp_path / "out" / "refined")
    assert table.num_rows == 3
    assert {"path", "depth", "space", "scale", "shift", "error_stage", "median_depth"} <= set(table.column_names)
    rows = {Path(r["path"]).name: r for r in table.select(["path", "error_stage", "median_depth"]).to_pylist()}
    # an all-null column reaches a numpy step as NaN (Ray's conversion), so "no error" is None or NaN
    assert all(pd.isna(rows[f"img{i}.png"]["error_stage"]) and np.isfinite(rows[f"img{i}.png"]["median_depth"])
               for i in range(3))


def test_one_actor_per_gpu_sees_its_own_device(tmp_path):
    write_images(tmp_path / "photos", [(32, 32)] * 12)
    code = textwrap.dedent(f"""
        import ray
        import stage_helpers

        ray.init(address="local", num_cpus=2, num_gpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
        ds = ray.data.read_images({str(tmp_path / "photos")!r}, num_cpus=0.25, override_num_blocks=12)
        ds = ds.map_batches(stage_helpers.probed_stage(), fn_constructor_args=({SPEC!r}, "default"),
                            fn_constructor_kwargs={{"device": "cpu", "torch_threads": 1, "low_res": 16, "high_res": 32}},
                            compute=ray.data.ActorPoolStrategy(size=2), num_gpus=1, num_cpus=0.5, batch_size=2)
        ds.select_columns(["cuda_visible_devices", "error_stage"]).write_parquet({str(tmp_path / "out")!r},
                                                                                  ray_remote_args={{"num_cpus": 0.25}})
        ray.shutdown()
    """)
    run_python(code, tmp_path)
    table = pq.read_table(tmp_path / "out").to_pydict()
    assert len(table["cuda_visible_devices"]) == 12 and set(table["error_stage"]) == {None}
    seen = set(table["cuda_visible_devices"])
    assert len(seen) == 2 and all(value in ("0", "1") for value in seen), seen
