"""``sddr train`` reading ``sddr pseudolabel`` training shards directly (``kind: shards``).

Shards are written here with the shard writer functions (``table_bytes``,
``publish_bytes``, ``file_metadata``, ``OutputLayout.write_manifest``), laid out as the
pseudo-label job lays them out, without Ray. S3 runs on a moto server on 127.0.0.1.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sddr_pipeline import __version__
from sddr_pipeline.data import make_scene
from sddr_pipeline.distillation import cluster_masks
from sddr_pipeline.inference.edges import edge_map
from sddr_pipeline.inference.normalize import resize
from sddr_pipeline.predictors import OutputKind, working_size
from sddr_pipeline.shards import (
    DEPTH_SCHEMA,
    FORMAT,
    KIND_DEPTH,
    KIND_TRAINING,
    TRAINING_SCHEMA,
    OutputLayout,
    decode_array,
    encode_array,
    encode_regions,
    file_metadata,
    publish_bytes,
    read_shards,
)
from sddr_pipeline.shards.io import table_bytes
from sddr_pipeline.training import ConfigError, ExampleSource, train
from sddr_pipeline.training.config import config_from_dict
from sddr_pipeline.training.samples import make_stored_example
from sddr_pipeline.training import shard_source
from sddr_pipeline.training.shard_source import ShardSourceError

SIZE = (72, 96)
LOW_RES, HIGH_RES, CROP = 40, 96, 48
ROWS = 6


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- writing


def _at(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None], size)[0, 0].numpy()


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def training_row(i: int, *, space: str = "disparity", gs_is_refined: bool = False, source: str | None = None) -> dict:
    """A row like ``PseudoLabelStage`` writes: raw low/high in ``space``, refined map
    (normalised disparity), G_S (its edge map, or the refined map itself), regions."""
    scene = make_scene(*SIZE, seed=40 + i)
    disp = (1.0 / scene.depth).astype(np.float32)
    low = _at(disp, working_size(*SIZE, LOW_RES))
    high = _at(disp, working_size(*SIZE, HIGH_RES))
    if space == "depth":
        low, high = 1.0 / low, 1.0 / high
    refined = ((disp - disp.min()) / (disp.max() - disp.min())).astype(np.float32)
    gs = refined if gs_is_refined else edge_map(torch.from_numpy(refined)[None, None])[0, 0].numpy().astype(np.float32)
    regions, count = encode_regions(cluster_masks(gs, 0.05, 4, 0))
    return {
        "id": f"img{i:02d}", "source": source or f"/photos/img{i:02d}.png", "width": SIZE[1], "height": SIZE[0],
        "image": png_bytes(scene.rgb), "depth": encode_array(refined), "depth_encoding": "npy",
        "depth_dtype": "float32", "depth_shape": list(SIZE), "scale": 1.0, "shift": 0.0,
        "scale_source": "normalized", "space": "disparity", "metric": False, "confidence": None,
        "low": encode_array(low), "high": encode_array(high), "predictor": "test", "refiner": "test",
        "seconds": 0.0, "gs": encode_array(gs), "regions": regions, "regions_count": count,
    }


def write_job(root: str, rows: list[dict], *, storage_options=None, rows_per_shard: int = 4, row_group_size: int = 2,
              schema: pa.Schema = TRAINING_SCHEMA, kind: str = KIND_TRAINING, input_uri: str = "/photos") -> OutputLayout:
    """The output of a pseudo-label job: shards (row groups of ``row_group_size``), manifest."""
    layout = OutputLayout(root, storage_options)
    pipeline = "pseudolabel" if kind == KIND_TRAINING else "refine"
    completed = {}
    for n, start in enumerate(range(0, len(rows), rows_per_shard)):
        chunk = rows[start:start + rows_per_shard]
        table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in chunk], schema=schema)
        meta = file_metadata(kind, shard=n, predictor="test", refiner="test", config={}, package_version=__version__)
        publish_bytes(layout.fs, layout.shard_path(n), table_bytes(table, metadata=meta, row_group_size=row_group_size))
        completed[str(n)] = {"file": f"shards/part-{n:05d}.parquet", "rows": len(chunk), "errors": 0}
    layout.write_manifest({
        "format": FORMAT, "pipeline": pipeline, "kind": kind, "package_version": __version__,
        "input": {"uri": input_uri, "kind": "folder", "count": len(rows)}, "completed": completed,
    })
    return layout


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [training_row(i) for i in range(ROWS)]


@pytest.fixture(scope="module")
def job(tmp_path_factory, rows) -> Path:
    root = tmp_path_factory.mktemp("pl") / "run"
    write_job(str(root), rows)  # 2 files (4 + 2 rows), row groups of 2
    return root


def tiny(output: Path, root, **changes) -> dict:
    source = {"kind": "shards", "root": str(root)}
    source.update(changes.pop("source", {}))
    cfg = {
        "stages": [{"kind": "gt", "steps": 1}, {"kind": "distill", "steps": 2}], "distill": {"pool": 3, "regions": 4},
        "preset": "sddr-small", "seed": 5, "batch_size": 2, "crop": CROP, "crop_scale": [0.8, 1.0], "lr": 1e-3,
        "data": [source], "low_res": 32, "high_res": 80, "checkpoint_every": 10, "validate_every": 0,
        "output": str(output), "device": "cpu",
    }
    cfg.update(changes)
    return cfg


def source_of(cfg: dict) -> ExampleSource:
    config = config_from_dict(cfg)
    return ExampleSource(config.data, config.examples)


def same(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("low", "high", "target", "mask", "gs"))


# ---------------------------------------------------------------------------- examples


def test_examples_are_crops_of_the_stored_low_prediction(job, tmp_path):
    cfg = tiny(tmp_path, job)
    source = source_of(cfg)
    assert len(source._shards[0]) == ROWS and source._shards[0].space == "disparity"  # inferred ("auto")
    table = read_shards(str(job)).to_pylist()  # global row order = shard order, then row order
    picked = set()
    for index in range(10):
        ex = source.example(index)
        assert ex.low.shape == ex.high.shape == ex.target.shape == ex.mask.shape == ex.gs.shape == (1, CROP, CROP)
        assert bool(ex.mask.all()) and ex.origin is None
        assert torch.allclose(ex.target, ex.low, atol=1e-6)  # the normalised LOW crop is the value target
        assert float(ex.low.min()) == 0.0 and float(ex.low.max()) == 1.0 and float(ex.high.max()) == 1.0
        # the same draws by hand, from the row read back with plain read_shards
        rng = np.random.default_rng([5, index])
        rng.random()
        row = table[int(rng.integers(0, ROWS))]
        picked.add(row["id"])
        expected, _, _ = make_stored_example(
            decode_array(row["low"]), decode_array(row["high"]), decode_array(row["gs"]), OutputKind("disparity"),
            rng, name=row["id"], crop=CROP, crop_scale=(0.8, 1.0), flip=True,
        )
        assert ex.name == row["id"] and same(ex, expected)
        assert same(ex, source.example(index)) and same(ex, source_of(cfg).example(index))  # (seed, index) only
    assert len(picked) >= 4  # rows of both files and several row groups


def test_rows_are_read_lazily_by_column_chunk(job, tmp_path, monkeypatch):
    shards = source_of(tiny(tmp_path, job, source={"prediction_space": "disparity"}))._shards[0]
    fetched: list[tuple[str, int, int]] = []
    real = shards.fs.cat_ranges

    def spy(paths, starts, ends, **kw):
        fetched.extend(zip(paths, starts, ends))
        return real(paths, starts, ends, **kw)

    monkeypatch.setattr(shards.fs, "cat_ranges", spy)
    monkeypatch.setattr(shard_source, "MERGE_GAP", 0)  # the test's chunks are tiny: no merging
    row = shards.row(5)  # file 1, row 1: its first row group
    assert row.name == "img05" and row.image is None
    meta = shards._footer(1)
    chunks = {meta.row_group(0).column(j).path_in_schema: meta.row_group(0).column(j) for j in range(meta.num_columns)}
    needed = sum(chunks[c].total_compressed_size for c in ("id", "source", "width", "height", "low", "high", "gs"))
    assert {p for p, _, _ in fetched} == {shards.files[1]}
    assert sum(b - a for _, a, b in fetched) == needed  # not the image, refined map, regions, ...
    fetched.clear()
    assert shards.row(5) is row and not fetched  # cached
    assert shards.row(5, image=True).image == rows_image(5)


def rows_image(i: int) -> bytes:
    return png_bytes(make_scene(*SIZE, seed=40 + i).rgb)


def test_all_maps_share_one_box_and_flip(tmp_path):
    """With G_S := the refined map, the G_S crop (image size) matches the HIGH crop (the
    HIGH prediction is at the image's size here) and the LOW one up to LOW's blur."""
    root = tmp_path / "pl"
    write_job(str(root), [training_row(i, gs_is_refined=True) for i in range(3)])
    source = source_of(tiny(tmp_path, root, crop_scale=[1.0, 1.0]))
    flipped = []
    for index in range(8):
        ex = source.example(index)
        gs = (ex.gs - ex.gs.min()) / (ex.gs.max() - ex.gs.min())
        err, mirrored = float((gs - ex.high).abs().mean()), float((gs.flip(-1) - ex.high).abs().mean())
        assert err < 1e-3 and mirrored > 0.02, (index, err, mirrored)
        assert float((gs - ex.target).abs().mean()) < 0.5 * float((gs.flip(-1) - ex.target).abs().mean())
        rng = np.random.default_rng([5, index])  # source, row, box side and position, then the flip
        rng.random(), rng.integers(0, 3), rng.uniform(), rng.uniform(), rng.uniform()
        flipped.append(bool(rng.random() < 0.5))
    assert any(flipped) and not all(flipped)


def test_prediction_space_depth_is_inferred_or_set(tmp_path, rows):
    depth_root = tmp_path / "pl-depth"
    write_job(str(depth_root), [training_row(i, space="depth") for i in range(ROWS)])
    disp_root = tmp_path / "pl-disp"
    write_job(str(disp_root), rows)
    auto = source_of(tiny(tmp_path, depth_root))
    assert auto._shards[0].space == "depth"
    told = source_of(tiny(tmp_path, depth_root, source={"prediction_space": "depth"}))
    disp = source_of(tiny(tmp_path, disp_root))
    for index in range(4):
        a, b, c = auto.example(index), told.example(index), disp.example(index)
        assert same(a, b)
        assert torch.allclose(a.low, c.low, atol=1e-4) and torch.allclose(a.high, c.high, atol=1e-4)
    # a refined map unrelated to the predictions: no sign to go by
    noisy = tmp_path / "pl-noise"
    bad = []
    for i in range(3):
        r = dict(rows[i])
        r["depth"] = encode_array(np.random.default_rng(i).random(SIZE).astype(np.float32))
        bad.append(r)
    write_job(str(noisy), bad)
    with pytest.raises(ShardSourceError, match="set prediction_space"):
        source_of(tiny(tmp_path, noisy))
    assert source_of(tiny(tmp_path, noisy, source={"prediction_space": "disparity"}))._shards[0].space == "disparity"


PREDICTORS_MODULE = '''
import numpy as np
from scipy.ndimage import gaussian_filter


def disparity(image):
    return gaussian_filter(image.astype(np.float32).mean(-1), 1.5) / 255.0 + 0.1


def depth(image):
    return 1.0 / disparity(image)
'''


def test_rows_made_by_the_pseudolabel_stage(tmp_path):
    """Rows of the real ``PseudoLabelStage`` (no Ray), from a depth and a disparity model:
    read back, their prediction space inferred, the examples the same up to inversion."""
    from sddr_pipeline.models import Refiner
    from sddr_pipeline.pipelines.stage import PseudoLabelStage

    module = tmp_path / "models.py"
    module.write_text(PREDICTORS_MODULE)
    Refiner.from_config("sddr-small", seed=0).save_pretrained(tmp_path / "weights")
    sources = {}
    for fn, kind in (("depth", "depth"), ("disparity", "disparity")):
        stage = PseudoLabelStage(f"python:{module}:{fn};kind={kind}", str(tmp_path / "weights"), device="cpu",
                                 low_res=32, high_res=64, steps=1, regions=4)
        made = []
        for i in range(2):
            image = png_bytes(make_scene(*SIZE, seed=60 + i).rgb)
            row = stage.process({"id": f"i{i}", "source": f"/p/i{i}.png", "image": image, "gt": None,
                                 "gt_kind": None, "read_error": None})
            assert row["error_stage"] is None, row
            made.append(row)
        write_job(str(tmp_path / kind), made)
        sources[kind] = source_of(tiny(tmp_path, tmp_path / kind))
        assert sources[kind]._shards[0].space == kind
    for index in range(3):
        a, b = sources["depth"].example(index), sources["disparity"].example(index)
        assert a.name == b.name and torch.allclose(a.low, b.low, atol=1e-4) and torch.allclose(a.high, b.high, atol=1e-4)
        assert a.gs.shape == (1, CROP, CROP) and torch.equal(a.target, a.low)


# ---------------------------------------------------------------------------- training


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def straight(tmp_path_factory, job) -> Path:
    out = tmp_path_factory.mktemp("shards-straight")
    train(config_from_dict(tiny(out, job)), progress=None)
    return out


def test_training_on_shards_uses_stored_pseudo_labels(straight):
    records = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["gt", "distill", "distill"]
    assert set(records[0]["loss"]) == {"gt", "total"}  # stage gt: L_gt only
    for r in records[1:]:
        assert {"grad", "fusion"} <= set(r["loss"]) and r["loss"]["grad"] > 0 and r["loss"]["fusion"] > 0
    # pool of 3, batches of 2: stored G_S, never a teacher label
    assert [r["pseudo_labels"] for r in records[1:]] == [{"made": 0, "seconds": 0.0, "stored": 2},
                                                         {"made": 0, "seconds": 0.0, "stored": 1}]
    record = json.loads((straight / "checkpoints" / "step-000003.json").read_text())
    assert record["data"][0]["rows"] == ROWS and record["data"][0]["files"] == 2


def test_interrupted_run_on_shards_resumes_bitwise(straight, job, tmp_path):
    out = tmp_path / "run"
    cfg = config_from_dict(tiny(out, job, checkpoint_every=1))

    def stop(line: str) -> None:
        if line.startswith("step 2/"):
            raise Interrupt(line)

    with pytest.raises(Interrupt):
        train(cfg, progress=stop)
    lines: list[str] = []
    train(cfg, progress=lines.append)
    assert lines[0] == "resumed from step-000002.json (step 2/3)"
    assert lines[1] == ("distill round from step 1: pool of 3 examples, pseudo-labels by the teacher of step 1 "
                        "(training-shard examples use their stored G_S)")
    for name in ("step-000003.safetensors", "step-000003.optim.safetensors"):
        a, b = load_file(str(out / "checkpoints" / name)), load_file(str(straight / "checkpoints" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_data_workers_read_the_shards_too(straight, job, tmp_path):
    """A spawned data worker opens the shards itself and makes the same batches."""
    out = tmp_path / "workers"
    train(config_from_dict(tiny(out, job, data_workers=1)), progress=None)
    a, b = load_file(str(out / "final" / "model.safetensors")), load_file(str(straight / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_shards(job, rows, tmp_path):
    root = tmp_path / "pl"
    shutil.copytree(job, root)
    cfg = config_from_dict(tiny(tmp_path / "run", root, stages=[{"kind": "gt", "steps": 1}]))
    train(cfg, progress=None)
    lines: list[str] = []
    train(cfg, progress=lines.append)  # unchanged shards: resumes (nothing left to do)
    assert lines[0] == "resumed from step-000001.json (step 1/1)"
    write_job(str(root), rows + [training_row(ROWS)])  # the pseudo-label job wrote one more row
    with pytest.raises(ValueError, match=r"training shards of data\[0\].*6 rows in 2 files.*7 rows in 2 files"):
        train(cfg, progress=None)


PREDICTOR_MODULE = '''
import numpy as np


def predict(image):
    """Disparity from luminance: a stand-in for a real model."""
    return image.astype(np.float32).mean(-1) / 255.0 + 0.1
'''


def test_a_round_can_relabel_shard_examples(job, tmp_path):
    module = tmp_path / "tiny_model.py"
    module.write_text(PREDICTOR_MODULE)
    spec = f"python:{module}:predict"
    stages = [{"kind": "distill", "steps": 1, "relabel_shards": True}]
    with pytest.raises(ConfigError, match=r"stages\[0\].relabel_shards needs the real predictor"):
        config_from_dict(tiny(tmp_path, job, stages=stages))
    with pytest.raises(ConfigError, match=r"stages\[0\].relabel_shards: no data source has kind 'shards'"):
        config_from_dict(tiny(tmp_path, job, stages=stages, predictor=spec, data=[{"kind": "synthetic"}]))
    cfg = config_from_dict(tiny(tmp_path / "out", job, stages=stages, predictor=spec))
    assert cfg.to_dict()["stages"] == stages and config_from_dict(cfg.to_dict()) == cfg
    ex = ExampleSource(cfg.data, cfg.examples).example(0, origin=True)
    assert ex.origin is not None and ex.origin.context.gt is None and ex.origin.image.dtype == np.uint8
    train(cfg, progress=None)
    record = json.loads((tmp_path / "out" / "log.jsonl").read_text().splitlines()[-1])
    assert record["pseudo_labels"]["made"] == 2 and "stored" not in record["pseudo_labels"]
    assert record["loss"]["grad"] > 0


# ------------------------------------------------------------------------------ errors


def test_config_keys_of_the_shards_source(tmp_path, job, monkeypatch):
    monkeypatch.setenv("SDDR_TEST_ENDPOINT", "http://127.0.0.1:9")
    options = {"key": "k", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "${SDDR_TEST_ENDPOINT}"}}
    cfg = config_from_dict(tiny(tmp_path, "s3://bucket/pl/", source={"storage_options": options}))
    src = cfg.data[0]
    assert src.root == "s3://bucket/pl" and src.prediction_space == "auto"
    assert src.storage_options["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
    recorded = cfg.to_dict()
    assert "s3cr3t" not in json.dumps(recorded) and "s3cr3t" not in repr(cfg)  # never recorded or printed
    assert recorded["data"] == [{"kind": "shards", "root": "s3://bucket/pl", "layout": "auto", "weight": 1.0,
                                 "size": [384, 512], "prediction_space": "auto"}]
    assert config_from_dict(recorded) == cfg
    assert config_from_dict(tiny(tmp_path, "file:///data/pl")).data[0].root == "file:///data/pl"
    monkeypatch.chdir(tmp_path)
    assert config_from_dict(tiny(tmp_path, "pl")).data[0].root == str(tmp_path / "pl")
    for source, key in [
        ({"kind": "dataset", "root": str(tmp_path), "storage_options": {}}, r"data\[0\].storage_options is only"),
        ({"kind": "shards", "root": str(job), "prediction_space": "inverse"}, r"data\[0\].prediction_space must be"),
        ({"kind": "shards", "root": str(job), "storage_options": "anon"}, r"data\[0\].storage_options must be a mapping"),
        ({"kind": "shards", "root": str(job), "layout": "kitti"}, r"data\[0\].layout is only"),
        ({"kind": "shards"}, r"data\[0\].root must be"),
    ]:
        with pytest.raises(ConfigError, match=key):
            config_from_dict(tiny(tmp_path, job, data=[source]))


def test_bad_roots_and_files_are_named(tmp_path, rows):
    def opens(root, **source):
        return source_of(tiny(tmp_path, root, source=source))

    missing = tmp_path / "nowhere"
    with pytest.raises(ShardSourceError, match=f"data source root {missing} does not exist"):
        opens(missing)
    with pytest.raises(ShardSourceError, match="cannot open training shards at nosuchproto://x"):
        opens("nosuchproto://x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ShardSourceError, match="no training shards at .*empty: no manifest.json and no"):
        opens(empty)
    # refined-depth shards (sddr pipeline refine --save-predictions): no G_S
    depth_job = tmp_path / "refined"
    write_job(str(depth_job), rows[:2], schema=DEPTH_SCHEMA, kind=KIND_DEPTH)
    with pytest.raises(ShardSourceError, match=r"manifest.json: these are 'depth' shards of a 'refine' job"):
        opens(depth_job)
    shard = depth_job / "shards" / "part-00000.parquet"
    with pytest.raises(ShardSourceError, match=f"{shard} is not a training shard: no 'gs' column"):
        opens(depth_job / "shards")  # a folder of files, no manifest
    with pytest.raises(ShardSourceError, match=f"{shard} is not a training shard: no 'gs' column"):
        opens(shard)  # one file
    # a training shard without its low column
    no_low = tmp_path / "no-low"
    write_job(str(no_low), rows[:2], schema=pa.schema([f for f in TRAINING_SCHEMA if f.name != "low"]))
    with pytest.raises(ShardSourceError, match=r"no-low/shards/part-00000.parquet is not a training shard: no 'low'"):
        opens(no_low)
    # a later file checked when first read, a listed file that is gone, a null G_S
    mixed = tmp_path / "mixed"
    write_job(str(mixed), rows[:2], rows_per_shard=1, schema=pa.schema([f.with_nullable(True) for f in TRAINING_SCHEMA]))
    second = mixed / "shards" / "part-00001.parquet"
    broken = dict(rows[1], gs=None)
    table = pa.Table.from_pylist([{k: broken.get(k) for k in TRAINING_SCHEMA.names}],
                                 schema=pa.schema([f.with_nullable(True) for f in TRAINING_SCHEMA]))
    second.write_bytes(table_bytes(table))
    shards = opens(mixed, prediction_space="disparity")._shards[0]
    shards.row(0)
    with pytest.raises(ShardSourceError, match=f"{second} row 0 \\(id 'img01'\\): column 'gs' is null"):
        shards.row(1)
    second.unlink()
    with pytest.raises(ShardSourceError, match=f"{second} is listed as completed in .*manifest.json but does not exist"):
        opens(mixed)


def test_validation_sets_are_refused(tmp_path, rows):
    held = tmp_path / "kitti_sample" / "pl"
    write_job(str(held), rows[:2])
    with pytest.raises(ShardSourceError, match="validation set kitti_sample"):
        source_of(tiny(tmp_path, held))
    from_held = tmp_path / "pl-from-held"
    write_job(str(from_held), rows[:2], input_uri="/data/middlebury2014q")
    with pytest.raises(ShardSourceError, match="made from the validation set middlebury2014q"):
        source_of(tiny(tmp_path, from_held))
    row_from_held = tmp_path / "pl-row"
    write_job(str(row_from_held), [training_row(0, source="s3://b/nyu_sample/a.png")])
    shards = source_of(tiny(tmp_path, row_from_held, source={"prediction_space": "disparity"}))._shards[0]
    with pytest.raises(ShardSourceError, match="row 0 \\(id 'img00'\\): made from the validation set nyu_sample"):
        shards.row(0)


# ---------------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3():
    server_mod = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        assert host == "127.0.0.1"
        options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        fs.mkdir("train-shards")
        yield SimpleNamespace(fs=fs, options=options)
    finally:
        server.stop()


def test_s3_shards_give_the_same_examples(s3, job, rows, tmp_path):
    write_job("s3://train-shards/pl", rows, storage_options=s3.options)
    local = source_of(tiny(tmp_path, job))
    remote = source_of(tiny(tmp_path, "s3://train-shards/pl", source={"storage_options": s3.options}))
    assert len(remote._shards[0]) == ROWS
    for index in range(6):
        assert same(local.example(index), remote.example(index))
    a, b = local.fingerprint()[0], remote.fingerprint()[0]
    assert a.pop("root") == str(job) and b.pop("root") == "s3://train-shards/pl" and a == b
    frame = pd.read_parquet("s3://train-shards/pl/shards", storage_options=s3.options, columns=["id"])
    assert list(frame["id"]) == [r["id"] for r in rows]
    with pytest.raises(ShardSourceError, match="data source root s3://train-shards/none does not exist"):
        source_of(tiny(tmp_path, "s3://train-shards/none", source={"storage_options": s3.options}))
