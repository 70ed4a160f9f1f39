"""The Parquet shard format, its writers/readers and the output layout (no Ray, no models)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sddr_pipeline.shards import (
    DEPTH_SCHEMA,
    ERROR_SCHEMA,
    KIND_DEPTH,
    OutputLayout,
    ShardFormatError,
    ShardPlan,
    StorageError,
    decode_array,
    decode_confidence,
    decode_depth,
    decode_regions,
    encode_array,
    encode_regions,
    file_metadata,
    filesystem,
    parse_file_metadata,
    read_errors,
    read_metadata,
    read_shards,
    retry,
    shard_of,
    write_table,
)
from sddr_pipeline.shards.io import TMP_PREFIX, parquet_files, publish_bytes, remove_temporaries


def depth_row(id_: str, depth: np.ndarray, **extra) -> dict:
    row = {name: None for name in DEPTH_SCHEMA.names}
    row.update(id=id_, source=f"/in/{id_}.png", width=depth.shape[1], height=depth.shape[0], depth=encode_array(depth),
               depth_encoding="npy", depth_dtype=str(depth.dtype), depth_shape=list(depth.shape), scale=2.0, shift=0.5,
               scale_source="predictor", space="disparity", metric=False, predictor="p@1", refiner="r@2", seconds=0.1)
    row.update(extra)
    return row


def sample_depth(seed: int = 0, shape=(5, 7)) -> np.ndarray:
    d = np.random.default_rng(seed).random(shape, dtype=np.float32) * 10
    d[0, 0], d[0, 1], d[1, 0], d[1, 1] = np.nan, np.inf, -0.0, np.float32(1e-38)
    return d


def test_arrays_round_trip_exactly():
    d = sample_depth()
    back = decode_array(encode_array(d))
    assert back.dtype == np.float32 and back.shape == d.shape
    assert np.array_equal(back.view(np.uint32), d.view(np.uint32))  # bit-exact, NaN/inf/-0 included
    assert decode_array(None) is None
    with pytest.raises(ShardFormatError):
        decode_array(b"not npy")


def test_decode_depth_checks_the_row():
    d = sample_depth()
    row = depth_row("a", d)
    assert np.array_equal(decode_depth(row), d, equal_nan=True)
    with pytest.raises(ShardFormatError, match="depth is float32"):
        decode_depth({**row, "depth_shape": [7, 5]})
    with pytest.raises(ShardFormatError, match="depth is float64"):
        decode_depth({**row, "depth": encode_array(d.astype(np.float64))})
    with pytest.raises(ShardFormatError, match="depth_encoding"):
        decode_depth({**row, "depth_encoding": "png16"})


def test_regions_round_trip_and_overlap_refused():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(6, 9))
    masks = np.stack([labels == k + 1 for k in range(4)])
    masks[3] = False  # a trailing empty region survives
    data, k = encode_regions(masks)
    assert k == 4
    assert np.array_equal(decode_regions({"id": "x", "regions": data, "regions_count": k}), masks)
    masks[0, 0, 0] = masks[1, 0, 0] = True
    with pytest.raises(ShardFormatError, match="overlap"):
        encode_regions(masks)


def test_published_shard_is_plain_parquet_with_metadata(tmp_path):
    rows = [depth_row(f"id{i}", sample_depth(i)) for i in range(3)]
    meta = file_metadata(KIND_DEPTH, shard=7, predictor="p@1", refiner="r@2", config={"mode": "one-stage"},
                         package_version="0.1.0")
    fs, root = filesystem(str(tmp_path))
    path = f"{root}/shards/part-00007.parquet"
    write_table(fs, path, pa.Table.from_pylist(rows, schema=DEPTH_SCHEMA), metadata=meta)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["part-00007.parquet"]
    info = read_metadata(path)
    assert info["kind"] == "depth" and info["shard"] == "7" and info["refiner"] == "r@2"
    assert info["config"] == {"mode": "one-stage"}
    frame = pd.read_parquet(tmp_path / "shards")
    assert list(frame["id"]) == ["id0", "id1", "id2"]
    assert np.array_equal(decode_depth(frame.iloc[1]), sample_depth(1), equal_nan=True)
    assert pq.read_table(path).schema.field("depth_shape").type == pa.list_(pa.int32())


def test_reading_needs_no_ray(tmp_path):
    fs, root = filesystem(str(tmp_path))
    write_table(fs, f"{root}/part-00000.parquet", pa.Table.from_pylist([depth_row("a", sample_depth())], schema=DEPTH_SCHEMA))
    code = (
        "import sys, pandas as pd; from sddr_pipeline.shards import decode_depth;"
        f"f = pd.read_parquet({str(tmp_path)!r}); print(decode_depth(f.iloc[0]).shape, 'ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["(5,", "7)", "False"]


def test_failed_publish_leaves_nothing(tmp_path, monkeypatch):
    fs, root = filesystem(str(tmp_path))
    path = f"{root}/part-00000.parquet"

    def refuse(src, dst, **kw):
        raise PermissionError("read-only")

    monkeypatch.setattr(fs, "mv", refuse)
    with pytest.raises(PermissionError):
        publish_bytes(fs, path, b"data")
    assert list(tmp_path.iterdir()) == []


def test_temporaries_are_hidden_and_removable(tmp_path, monkeypatch):
    fs, root = filesystem(str(tmp_path))
    seen = []
    real_mv = fs.mv

    def spy(src, dst, **kw):
        seen.append(Path(src).name)
        return real_mv(src, dst, **kw)

    monkeypatch.setattr(fs, "mv", spy)
    publish_bytes(fs, f"{root}/part-00000.parquet", b"x")
    assert seen and seen[0].startswith(TMP_PREFIX) and not seen[0].endswith(".parquet")
    (tmp_path / f"{TMP_PREFIX}dead-part-00001.parquet.partial").write_bytes(b"half")
    assert [Path(p).name for p in parquet_files(fs, root)] == ["part-00000.parquet"]
    assert remove_temporaries(fs, root) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]


def test_retry_backs_off_on_transient_errors_only():
    delays: list[float] = []
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert retry(flaky, what="x", attempts=5, base_delay=0.1, sleep=delays.append) == "ok"
    assert calls["n"] == 3 and len(delays) == 2
    assert 0.05 <= delays[0] <= 0.15 and 0.1 <= delays[1] <= 0.3  # doubling, with +-50% jitter

    def missing():
        calls["n"] += 1
        raise FileNotFoundError("gone")

    calls["n"] = 0
    with pytest.raises(FileNotFoundError):
        retry(missing, what="x", attempts=5, sleep=delays.append)
    assert calls["n"] == 1

    def down():
        raise TimeoutError("timed out")

    with pytest.raises(StorageError, match="reading y failed after 3 attempts"):
        retry(down, what="reading y", attempts=3, sleep=lambda s: None)


def test_shard_plan_is_deterministic():
    ids = tuple(sorted(f"img/{i:03d}" for i in range(10)))
    plan = ShardPlan(ids, 4)
    assert plan.count == 3
    assert [len(plan.shard_ids(i)) for i in range(3)] == [4, 4, 2]
    first = plan.first_ids
    assert all(shard_of(first, id_) == i for i in range(3) for id_ in plan.shard_ids(i))
    assert plan.describe()["ids_sha256"] == ShardPlan(ids, 4).describe()["ids_sha256"]
    with pytest.raises(ValueError, match="sorted"):
        ShardPlan(tuple(reversed(ids)), 4)
    with pytest.raises(ValueError, match="unique"):
        ShardPlan(("a", "a"), 4)


def test_read_shards_reads_only_completed_shards(tmp_path):
    layout = OutputLayout(str(tmp_path))
    table = pa.Table.from_pylist([depth_row("a", sample_depth())], schema=DEPTH_SCHEMA)
    write_table(layout.fs, layout.shard_path(0), table)
    write_table(layout.fs, layout.shard_path(1), table)  # published but not recorded: a crash before the manifest
    errors = pa.Table.from_pylist([{"id": "b", "source": "/in/b.png", "stage": "decode", "reason": "broken"}], schema=ERROR_SCHEMA)
    write_table(layout.fs, layout.errors_path(0), errors)
    layout.write_manifest({"format": "sddr-shards/1", "kind": "depth", "completed": {"0": {"rows": 1, "errors": 1}}})
    assert read_shards(str(tmp_path)).column("id").to_pylist() == ["a"]
    assert read_errors(str(tmp_path)).to_pylist()[0]["reason"] == "broken"
    assert json.loads((tmp_path / "manifest.json").read_text())["kind"] == "depth"


def test_parse_metadata_refuses_foreign_files():
    with pytest.raises(ShardFormatError, match="not an sddr shard"):
        parse_file_metadata({b"pandas": b"{}"})


def test_confidence_column_decodes_and_is_checked():
    d = sample_depth(3)
    conf = np.random.default_rng(3).random(d.shape, dtype=np.float32)
    row = depth_row("c", d, confidence=encode_array(conf))
    assert np.array_equal(decode_confidence(row), conf)
    assert decode_confidence(depth_row("n", d)) is None  # null: the run did not ask for it
    assert decode_confidence({k: v for k, v in row.items() if k != "confidence"}) is None
    table = pa.Table.from_pylist([row], schema=DEPTH_SCHEMA)
    assert np.array_equal(decode_confidence(table.to_pandas().iloc[0]), conf)
    with pytest.raises(ShardFormatError, match="row 'c': confidence must be float32"):
        decode_confidence({**row, "confidence": encode_array(conf[:, :3])})
    with pytest.raises(ShardFormatError, match="float32"):
        decode_confidence({**row, "confidence": encode_array(conf.astype(np.float64))})
