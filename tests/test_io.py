"""Output files: atomic writes, 16-bit PNG encoding, previews."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from sddr_pipeline.io import atomic_path, atomic_write, colorize, read_png16, remove_temporaries, save_npy, save_png16, save_preview
from sddr_pipeline.io.depth_files import encode_png16
from sddr_pipeline.io.hashing import sha256_files
from sddr_pipeline.io.mappings import check_keys, field_names


def test_png16_round_trip_within_half_a_step(tmp_path):
    depth = np.linspace(0.5, 80.0, 64 * 48, dtype=np.float32).reshape(48, 64)
    enc = save_png16(tmp_path / "d.png", depth)
    back = read_png16(tmp_path / "d.png")
    assert np.max(np.abs(back - depth)) <= enc["scale"] / 2 + 1e-5
    assert back[0, 0] == pytest.approx(0.5, abs=1e-5) and back[-1, -1] == pytest.approx(80.0, abs=1e-3)


def test_png16_marks_nonfinite_as_zero_and_constant_maps():
    code, scale, offset = encode_png16(np.array([[1.0, np.nan], [np.inf, 1.0]]))
    assert code.tolist() == [[1, 0], [0, 1]]
    assert code[0, 0] * scale + offset == pytest.approx(1.0)
    code, scale, offset = encode_png16(np.full((2, 2), np.nan))
    assert code.max() == 0


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_atomic_path_renames_on_success_and_removes_on_failure(tmp_path):
    target = tmp_path / "sub" / "cloud.ply"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".tmp-") and tmp.suffix == ".ply"
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["cloud.ply"]
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "never.bin"):
        pass  # a writer that wrote nothing is an error, not a silently missing file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_atomic_files_get_the_mode_open_would_give_whatever_the_writer_chose(tmp_path):
    import os
    import stat

    from safetensors.numpy import save_file

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:  # safetensors creates its file 0600
            save_file({"x": np.zeros(2, np.float32)}, str(tmp))
        with atomic_path(tmp_path / "plain.bin") as tmp:
            tmp.write_bytes(b"x")
            os.chmod(tmp, 0o600)
    finally:
        os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"w.safetensors": 0o666 & ~mask, "plain.bin": 0o666 & ~mask}


def test_sha256_files_is_sha256sum_of_the_concatenation(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * (3 << 20) + b"tail")  # several read chunks
    b.write_bytes(b"second")
    assert sha256_files(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert sha256_files(a, b) == hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    assert sha256_files(str(b)) == hashlib.sha256(b"second").hexdigest()


def test_check_keys_names_every_unknown_key_and_the_known_ones():
    class Bad(RuntimeError):
        pass

    assert check_keys({"a": 1}, {"a", "b"}, what="demo config") == {"a": 1}
    with pytest.raises(Bad, match=r"^demo config: unknown key\(s\) loss\.x, loss\.y; known: a, b$"):
        check_keys({"y": 1, "a": 2, "x": 3}, ["b", "a"], what="demo config", where="loss", error=Bad)
    with pytest.raises(ValueError, match=r"^tool: unknown option\(s\) 3; known: a$"):
        check_keys({3: "v"}, {"a"}, what="tool", noun="option")
    with pytest.raises(ValueError, match=r"^demo config: loss must be a mapping, got list$"):
        check_keys([1], {"a"}, what="demo config", where="loss")


def test_field_names_of_a_dataclass():
    @dataclasses.dataclass
    class Demo:
        a: int = 0
        b: str = ""

    assert field_names(Demo) == frozenset({"a", "b"})


def test_remove_temporaries(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".tmp-abc-x.npy").write_bytes(b"1")
    save_npy(tmp_path / "sub" / "ok.npy", np.zeros((2, 2)))
    assert remove_temporaries(tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["ok.npy"]


def test_colorize_and_preview(tmp_path):
    x = np.linspace(0, 1, 100).reshape(10, 10)
    x[0, 0] = np.nan
    rgb = colorize(x)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert not np.array_equal(rgb[1, 0], rgb[9, 9])
    img = np.zeros((10, 10, 3), np.uint8)
    save_preview(tmp_path / "p.png", img, x)
    from PIL import Image

    assert Image.open(tmp_path / "p.png").size == (20, 10)
