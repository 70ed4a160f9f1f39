"""Names read from data files (COLMAP models, manifest.json, alignment.json, transforms.json,
Parquet rows) can never lead a write, link or read out of the folder they belong to
(issue 13, item 1), and long ids are shortened in error messages."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sddr_pipeline.io import load_depth
from sddr_pipeline.io.names import UnsafeNameError, check_name, name_problem, shorten

EVIL = "../../../x/evil"


def _files_outside(root: Path, allowed: list[Path]) -> list[str]:
    """Every file or link under ``root`` that is not inside one of ``allowed``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / n
            if not any(a == p or a in p.parents for a in allowed):
                found.append(str(p.relative_to(root)))
    return sorted(found)


def test_check_name_accepts_clean_relative_names():
    for good in ("a", "scene/im0", "we ird/ü name.png", "x.y/z"):
        assert check_name(good, "t") == good
        assert name_problem(good) is None


@pytest.mark.parametrize("bad, reason", [
    ("../../victim/v.txt", "'..' path segment"),
    ("a/../../b", "'..' path segment"),
    ("/etc/passwd", "absolute path"),
    ("C:/x", "absolute path"),
    ("a//b", "empty, '.' or '..'"),
    ("./a", "empty, '.' or '..'"),
    ("a/", "empty, '.' or '..'"),
    ("..\\x", "backslash"),
    ("a\x00b", "control characters"),
    ("", "empty"),
    (None, "NoneType, not a string"),
])
def test_check_name_refuses_escaping_names(bad, reason):
    with pytest.raises(UnsafeNameError) as info:
        check_name(bad, "model.bin: image 3", "image name")
    message = str(info.value)
    assert message.startswith(f"model.bin: image 3: refusing image name {bad!r}: ")
    assert reason in message


def test_shorten_keeps_short_text_and_cuts_long_text():
    assert shorten("abc") == "'abc'"
    long = "x" * 5000
    assert shorten(long) == "'" + "x" * 80 + "'... (5000 characters)"


# ------------------------------------------------------------------- sddr refine outputs


def fake_refine_output(root: Path, name: str, outputs_path: str = "depth/a.npy", metric: bool = True) -> Path:
    """An ``sddr refine`` output folder (one 12x16 map) whose manifest lists the image ``name``."""
    (root / "depth").mkdir(parents=True)
    depth = np.full((12, 16), 2.0, np.float32)
    np.save(root / "depth" / "a.npy", depth)
    entry = {"status": "done", "space": "depth", "metric": metric, "size": [12, 16],
             "outputs": {"depth_npy": outputs_path}}
    (root / "manifest.json").write_text(json.dumps({"images": {name: entry}}))
    return root


def test_load_depth_refuses_manifest_paths_that_escape(tmp_path):
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros((2, 2), np.float32))
    out = fake_refine_output(tmp_path / "a" / "out", "img", outputs_path="../../secret.npy")
    with pytest.raises(UnsafeNameError, match=r"refusing outputs.depth_npy path '../../secret.npy'"):
        load_depth(out, "img")


def test_nerf_export_refuses_an_escaping_manifest_name(tmp_path, capsys):
    from sddr_pipeline.cli.main import main

    src = fake_refine_output(tmp_path / "src", EVIL)
    cap = tmp_path / "a" / "b" / "cap"
    cap.mkdir(parents=True)
    transforms = cap / "transforms.json"
    transforms.write_text(json.dumps({"w": 16, "h": 12, "frames": [
        {"file_path": f"{EVIL}.png", "transform_matrix": np.eye(4).tolist()}]}))
    for fmt in ("nerfstudio", "instant-ngp", "3dgs"):
        assert main(["nerf", str(transforms), str(src), "--format", fmt]) == 2
        err = capsys.readouterr().err
        assert f"refusing image name '{EVIL}'" in err and "manifest.json" in err
    assert _files_outside(tmp_path, [src, transforms]) == []


def test_nerf_export_refuses_an_escaping_mapping_name(tmp_path):
    from sddr_pipeline.plugins.nerf import export_nerf

    cap = tmp_path / "a" / "b" / "cap"
    cap.mkdir(parents=True)
    transforms = cap / "transforms.json"
    transforms.write_text(json.dumps({"w": 16, "h": 12, "frames": [
        {"file_path": f"{EVIL}.png", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(UnsafeNameError, match=f"frame '{EVIL}.png': refusing depth file name '{EVIL}'"):
        export_nerf(transforms, {EVIL: np.full((12, 16), 2.0, np.float32)}, "nerfstudio")
    assert _files_outside(tmp_path, [transforms]) == []


def test_pointcloud_refuses_an_escaping_manifest_name(tmp_path, capsys):
    from sddr_pipeline.cli.main import main

    src = fake_refine_output(tmp_path / "src", EVIL)
    intr = tmp_path / "intr.json"
    intr.write_text(json.dumps({"fx": 20.0, "fy": 20.0, "cx": 8.0, "cy": 6.0}))
    out = tmp_path / "a" / "b" / "clouds"
    assert main(["pointcloud", str(src), "--intrinsics", str(intr), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sddr pointcloud: ") and f"refusing image name '{EVIL}'" in err
    assert _files_outside(tmp_path, [src, intr]) == []


def test_fuse_refuses_an_escaping_manifest_name(tmp_path, capsys):
    from sddr_pipeline.cli.main import main

    src = fake_refine_output(tmp_path / "src", EVIL)
    mesh = tmp_path / "a" / "mesh.ply"
    assert main(["fuse", str(src), "--output", str(mesh)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sddr fuse: ") and f"refusing image name '{EVIL}'" in err
    assert _files_outside(tmp_path, [src]) == []


# ------------------------------------------------------------------------ sddr colmap


def _evil_workspace(root: Path, names: list[str]) -> Path:
    """A COLMAP workspace whose model registers images under ``names``."""
    pycolmap = pytest.importorskip("pycolmap")
    ws = root / "ws"
    (ws / "images").mkdir(parents=True)
    (ws / "sparse" / "0").mkdir(parents=True)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera.create_from_model_name(1, "PINHOLE", 20.0, 16, 12))
    for i, name in enumerate(names):
        image = pycolmap.Image(name=name, keypoints=np.zeros((0, 2)), camera_id=1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    rec.write(str(ws / "sparse" / "0"))
    return ws


def test_colmap_refuses_an_escaping_image_name_before_any_file_operation(tmp_path):
    from sddr_pipeline.plugins.colmap import run_colmap

    attacker = tmp_path / "attacker"
    ws = _evil_workspace(attacker, ["../../victim/link.txt", "../../victim/v.txt"])
    (attacker / "victim").mkdir()
    (attacker / "victim" / "v.txt").write_text("attacker's content")  # what the copy fallback would copy
    (attacker / "victim" / "link.txt").write_text("attacker's content")
    user = tmp_path / "user"
    (user / "victim").mkdir(parents=True)
    (user / "victim" / "v.txt").write_text("precious")
    out = user / "out"
    with pytest.raises(ValueError, match=r"ws/sparse/0: image 1: refusing image name '../../victim/link.txt'"):
        run_colmap(ws, object(), object(), out)
    assert (user / "victim" / "v.txt").read_text() == "precious"
    assert sorted(p.name for p in (user / "victim").iterdir()) == ["v.txt"]  # no escaped symlink left behind
    assert not out.exists()


def test_colmap_link_images_never_replaces_a_file(tmp_path):
    from sddr_pipeline.plugins.colmap import ColmapError, _link_images

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(b"new")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "a.png").write_bytes(b"old")
    with pytest.raises(ColmapError, match="already exists"):
        _link_images(tmp_path / "src", tmp_path / "dst", ["a.png"])
    assert (tmp_path / "dst" / "a.png").read_bytes() == b"old"
    with pytest.raises(UnsafeNameError, match="'../x.png'"):
        _link_images(tmp_path / "src", tmp_path / "dst", ["../x.png"])


# ------------------------------------------------------------------- ids in error messages


def test_long_ids_are_shortened_in_input_errors(tmp_path):
    from sddr_pipeline.pipelines.inputs import InputError, check_id, list_inputs

    long = "a" * 4995 + "/../x"
    with pytest.raises(InputError) as info:
        check_id(long, "in.txt:1")
    assert str(info.value) == (f"in.txt:1: invalid id {'a' * 80!r}... (5000 characters): "
                               "it has an empty, '.' or '..' path segment and could escape its folder")
    with pytest.raises(InputError, match=r"\(1025 characters\): it is longer than 1024 characters$"):
        check_id("b" * 1025, "in.txt:2")
    listing = tmp_path / "in.txt"
    listing.write_text(f"x.png\t{'c' * 1000}\ny.png\t{'c' * 1000}\n")
    with pytest.raises(InputError) as info:
        list_inputs(str(listing), kind="list")
    assert len(str(info.value)) < 400 and "(1000 characters)" in str(info.value)


def test_long_ids_are_shortened_in_shard_row_errors():
    from sddr_pipeline.shards.schema import ShardFormatError, decode_depth

    with pytest.raises(ShardFormatError) as info:
        decode_depth({"id": "z" * 5000, "depth_encoding": "png"})
    assert str(info.value) == f"row {'z' * 80!r}... (5000 characters): unsupported depth_encoding 'png'"


def test_nerf_3dgs_refuses_a_dot_stem(tmp_path):
    from sddr_pipeline.plugins.nerf import export_nerf

    cap = tmp_path / "cap"
    cap.mkdir()
    transforms = cap / "transforms.json"
    transforms.write_text(json.dumps({"w": 16, "h": 12, "frames": [
        {"file_path": "a/..png", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(UnsafeNameError, match=r"transforms.json: frame 'a/..png': refusing image stem '.'"):
        export_nerf(transforms, {"a": np.full((12, 16), 2.0, np.float32)}, "3dgs")
    assert _files_outside(tmp_path, [transforms]) == []


def test_colmap_gt_depth_check_refuses_an_escaping_image_name(tmp_path):
    from sddr_pipeline.plugins.colmap import GroundTruthDepth

    ws = _evil_workspace(tmp_path, ["../../x/v"])
    (tmp_path / "gt").mkdir()
    with pytest.raises(UnsafeNameError, match=r"ws/sparse/0: image 1: refusing image name '../../x/v'"):
        GroundTruthDepth(tmp_path / "gt").check_workspace(ws)
