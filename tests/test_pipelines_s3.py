"""Shards and pipelines on S3: a moto server on 127.0.0.1 (a free port) with s3fs.

The Ray test shares the session cluster of ``test_pipelines_ray`` (its fixtures are
imported here), so running both files starts Ray once.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sddr_pipeline.pipelines.inputs import list_inputs
from sddr_pipeline.shards import DEPTH_SCHEMA, OutputLayout, decode_depth, read_errors, read_shards, write_table
from sddr_pipeline.shards.io import publish_bytes, read_bytes
from test_pipelines_ray import (  # noqa: F401 - fixtures shared with the Ray tests
    RES,
    SIZE,
    ray_cluster,
    weights,
    write_images,
    write_predictor,
)
from test_shards import depth_row, sample_depth

HANG_GUARD_S = 150
pytestmark = pytest.mark.usefixtures("hang_guard")


@pytest.fixture(scope="module")
def s3():
    server_mod = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        assert host == "127.0.0.1"
        options = {"key": "testing", "secret": "testing",
                   "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        fs.mkdir("bucket")
        yield SimpleNamespace(fs=fs, options=options)
    finally:
        server.stop()


def keys(s3, prefix: str) -> list[str]:
    s3.fs.invalidate_cache()
    return sorted(s3.fs.find(prefix))


def test_shards_round_trip_on_s3(s3):
    layout = OutputLayout("s3://bucket/run1", s3.options)
    table = pa.Table.from_pylist([depth_row(f"id{i}", sample_depth(i)) for i in range(2)], schema=DEPTH_SCHEMA)
    write_table(layout.fs, layout.shard_path(0), table)
    layout.write_manifest({"format": "sddr-shards/1", "kind": "depth", "completed": {"0": {"rows": 2, "errors": 0}}})
    assert keys(s3, "bucket/run1") == ["bucket/run1/manifest.json", "bucket/run1/shards/part-00000.parquet"]
    back = read_shards("s3://bucket/run1", s3.options)
    assert np.array_equal(decode_depth(back.to_pylist()[1]), sample_depth(1), equal_nan=True)
    frame = pd.read_parquet("s3://bucket/run1/shards", storage_options=s3.options)
    assert list(frame["id"]) == ["id0", "id1"]


def test_transient_s3_errors_are_retried(s3, monkeypatch):
    layout = OutputLayout("s3://bucket/flaky", s3.options)
    real_pipe, real_cat = layout.fs.pipe_file, layout.fs.cat_file
    failures = {"pipe": 2, "cat": 1}

    def pipe(path, data, **kw):
        if failures["pipe"]:
            failures["pipe"] -= 1
            raise ConnectionResetError("connection reset by peer")
        return real_pipe(path, data, **kw)

    def cat(path, **kw):
        if failures["cat"]:
            failures["cat"] -= 1
            raise TimeoutError("read timed out")
        return real_cat(path, **kw)

    monkeypatch.setattr(layout.fs, "pipe_file", pipe)
    monkeypatch.setattr(layout.fs, "cat_file", cat)
    publish_bytes(layout.fs, "bucket/flaky/x.bin", b"payload", attempts=3)
    assert read_bytes(layout.fs, "bucket/flaky/x.bin", attempts=3) == b"payload"
    assert failures == {"pipe": 0, "cat": 0}


def test_list_inputs_on_s3(s3, tmp_path):
    write_images(tmp_path / "in", ["a", "sub/b"])
    s3.fs.put(str(tmp_path / "in"), "bucket/listing/images", recursive=True)
    s3.fs.pipe_file("bucket/listing/list.txt", b"images/a.png\nimages/sub/b.png\tbee\n")
    found = list_inputs("s3://bucket/listing/images", storage_options=s3.options)
    assert found.kind == "images" and found.ids == ("a", "sub/b")
    assert found.sources == ("s3://bucket/listing/images/a.png", "s3://bucket/listing/images/sub/b.png")
    found = list_inputs("s3://bucket/listing/list.txt", storage_options=s3.options)
    assert dict(zip(found.ids, found.sources)) == {"images/a": "s3://bucket/listing/images/a.png",
                                                   "bee": "s3://bucket/listing/images/sub/b.png"}


def test_refine_pipeline_from_s3_to_s3(s3, tmp_path, weights, ray_cluster):
    from sddr_pipeline.pipelines.refine import run_refine_pipeline

    names = ["x1", "x2", "x3"]
    write_images(tmp_path / "in", names)
    s3.fs.put(str(tmp_path / "in"), "bucket/e2e/images", recursive=True)
    listing = "".join(f"images/{n}.png\n" for n in names) + "images/missing.png\n"
    s3.fs.pipe_file("bucket/e2e/list.txt", listing.encode())
    report = run_refine_pipeline("s3://bucket/e2e/list.txt", "s3://bucket/e2e/out", write_predictor(tmp_path / "mods"),
                                 weights, gpus_per_actor=0, actors=1, cpus_per_actor=0.5, batch_size=2, rows_per_shard=2,
                                 max_failed_share=0.5, storage_options=s3.options, stall_timeout_s=90.0, progress=None, **RES)
    assert (report.rows_written, report.rows_failed) == (3, 1)
    assert keys(s3, "bucket/e2e/out") == ["bucket/e2e/out/errors/part-00000.parquet", "bucket/e2e/out/manifest.json",
                                          "bucket/e2e/out/shards/part-00000.parquet", "bucket/e2e/out/shards/part-00001.parquet"]
    table = pq.read_table("bucket/e2e/out/shards", filesystem=s3.fs)
    assert sorted(table.column("id").to_pylist()) == [f"images/{n}" for n in names]
    assert all(decode_depth(r).shape == SIZE for r in read_shards("s3://bucket/e2e/out", s3.options).to_pylist())
    error = read_errors("s3://bucket/e2e/out", s3.options).to_pylist()
    assert [(e["id"], e["stage"]) for e in error] == [("images/missing", "read")]
    manifest = json.loads(s3.fs.cat_file("bucket/e2e/out/manifest.json"))
    assert manifest["config"]["storage_options"] == ["client_kwargs", "key", "secret"]  # names only, never secrets
    assert manifest["counts"]["pending"] == 0


def test_pointcloud_pipeline_transforms_json_on_s3(s3, tmp_path, weights, ray_cluster, shared_data):
    """A nerfstudio capture (two RGB-D sample frames: images, 16-bit depth, transforms.json)
    on S3 -> point shards and a merged PLY on S3, scaled by --scale-points from the
    frames' depth_file_path; read back with plain pyarrow through s3fs."""
    from sddr_pipeline.data import open_dataset
    from sddr_pipeline.geometry.cameras import OPENGL_FROM_OPENCV
    from sddr_pipeline.geometry.intrinsics import intrinsics_from_sample
    from sddr_pipeline.geometry.pointcloud import depth_to_pointcloud, nearest_distances
    from sddr_pipeline.pipelines.pointcloud import run_pointcloud_pipeline

    samples = open_dataset(shared_data / "rgbd_sequence_sample", layout="rgbd_sequence")[:2]
    K = samples[0].intrinsics
    frames = []
    for sample in samples:
        stem = sample.image_path.stem
        s3.fs.put_file(str(sample.image_path), f"bucket/pc/in/images/{stem}.jpg")
        s3.fs.put_file(str(sample.image_path.parent.parent / "depth" / f"{stem}.png"), f"bucket/pc/in/depth/{stem}.png")
        frames.append({"file_path": f"images/{stem}.jpg", "depth_file_path": f"depth/{stem}.png",
                       "transform_matrix": (sample.meta["pose"] @ OPENGL_FROM_OPENCV).tolist()})
    transforms = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2] + 0.5, "cy": K[1, 2] + 0.5, "w": 640, "h": 480,
                  "depth_unit_scale_factor": 0.001, "frames": frames}
    s3.fs.pipe_file("bucket/pc/in/transforms.json", json.dumps(transforms).encode())
    report = run_pointcloud_pipeline("s3://bucket/pc/in/transforms.json", "s3://bucket/pc/out", "simulated:low=64,high=128",
                                     weights, scale_points=100, voxel=0.02, gpus_per_actor=0, actors=1, cpus_per_actor=0.5,
                                     batch_size=1, rows_per_shard=1, storage_options=s3.options, stall_timeout_s=90.0,
                                     merge_ply="s3://bucket/pc/merged", progress=None, low_res=64, high_res=128)
    assert (report.rows_written, report.rows_failed) == (2, 0)
    assert keys(s3, "bucket/pc/out") == ["bucket/pc/out/manifest.json", "bucket/pc/out/shards/part-00000.parquet",
                                         "bucket/pc/out/shards/part-00001.parquet"]
    assert keys(s3, "bucket/pc/merged") == ["bucket/pc/merged/merge.json", "bucket/pc/merged/scene.ply"]
    table = pq.read_table("bucket/pc/out/shards", filesystem=s3.fs)
    assert table.column_names == ["image_id", "x", "y", "z", "r", "g", "b", "confidence"]
    assert sorted(set(table.column("image_id").to_pylist())) == ["images/00000", "images/00001"]
    first = table.filter(pc.equal(table.column("image_id"), "images/00000"))
    xyz = np.stack([first.column(c).to_numpy() for c in "xyz"], axis=1)
    exact = depth_to_pointcloud(samples[0].gt, intrinsics_from_sample(samples[0]), camera_to_world=samples[0].meta["pose"])
    assert float(np.median(nearest_distances(xyz, exact.points))) < 0.05  # the world frame of the poses
    assert report.outputs["merge"]["files"]["scene.ply"] > 0
