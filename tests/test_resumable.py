"""Resumable outputs (sddr_pipeline.io.resumable, issue 16 item 3): one settings message,
manifests on local paths and fsspec URIs, the input check, fingerprints and the lock."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from sddr_pipeline.io.lock import LOCK_NAME, OutputLockError, output_lock
from sddr_pipeline.io.resumable import (ManifestError, ResumeMismatch, check_input, check_settings, input_fingerprint,
                                        load_manifest, local_output, locked_output, same_input, save_manifest,
                                        setting_differences)


def memory_uri(name: str = "manifest.json") -> str:
    return f"memory://resumable-{uuid.uuid4().hex}/{name}"


def test_differences_name_each_key_with_old_and_new_values():
    old = {"mode": "one-stage", "resolutions": {"low": 384, "high": 1024}, "seed": 0, "gone": 1}
    new = {"mode": "two-stage", "resolutions": {"low": 512, "high": 1024}, "seed": 0, "added": [1, 2]}
    assert setting_differences(old, new) == {
        "added": (None, [1, 2]), "gone": (1, None), "mode": ("one-stage", "two-stage"), "resolutions.low": (384, 512),
    }
    assert setting_differences(old, new, ignore={"added", "gone", "mode", "resolutions"}) == {}


def test_a_missing_key_equals_none_so_older_outputs_still_resume():
    assert setting_differences({"a": 1}, {"a": 1, "new_option": None}) == {}
    assert setting_differences({"x": {"a": 1}}, {"x": {"a": 1, "b": None}}) == {}
    assert setting_differences({"x": None}, {"x": {"a": 1}}) == {"x": (None, {"a": 1})}


def test_settings_message_is_exact_and_raised_as_the_callers_type():
    class JobError(RuntimeError):
        pass

    with pytest.raises(JobError) as err:
        check_settings({"mode": "one-stage", "steps": 1}, {"mode": "two-stage", "steps": 2}, Path("/out"),
                       advice="use a new output folder", error=JobError)
    assert str(err.value) == ("cannot resume /out: it was made with other settings (mode: 'one-stage' -> 'two-stage'; "
                              "steps: 1 -> 2); use a new output folder")
    with pytest.raises(ResumeMismatch, match=r"^cannot resume s3://b/o: it was made with other settings \(lr: 0\.001 -> "
                                             r"0\.0005\); use a new output$"):
        check_settings({"lr": 1e-3}, {"lr": 5e-4}, "s3://b/o")
    check_settings({"lr": 1e-3, "steps": 5}, {"lr": 1e-3, "steps": 9}, "/out", ignore={"steps"})


def test_long_values_are_cut_in_the_message():
    with pytest.raises(ResumeMismatch) as err:
        check_settings({"ids": "a" * 1000}, {"ids": "b"}, "/out")
    assert "ids: 'aaaa" in str(err.value) and "...' -> 'b'" not in str(err.value) and len(str(err.value)) < 300


def test_an_output_of_another_input_is_refused():
    check_input("/data/a", "/data/a", "/out")
    with pytest.raises(ResumeMismatch) as err:
        check_input("/data/a", "/data/b", "/out")
    assert str(err.value) == "cannot resume /out: it was made from input /data/a, not /data/b; use a new output"


@pytest.mark.parametrize("where", ["local", "memory"])
def test_manifest_round_trip(tmp_path, where):
    location = tmp_path / "out" / "manifest.json" if where == "local" else memory_uri()
    assert load_manifest(location) is None
    manifest = {"format": 1, "settings": {"seed": 0}, "items": {"a": [1, 2]}}
    save_manifest(location, manifest)
    assert load_manifest(location) == manifest
    with fsspec.open(str(location), "rb") as f:  # the bytes every manifest had: indented JSON and a newline
        assert f.read() == (json.dumps(manifest, indent=2) + "\n").encode()
    if where == "local":
        assert os.listdir(tmp_path / "out") == ["manifest.json"]  # no temporary left


def test_manifest_on_a_given_filesystem(tmp_path):
    fs = fsspec.filesystem("memory")
    path = memory_uri().removeprefix("memory://")
    save_manifest(path, {"k": 1}, fs=fs)
    assert json.loads(fs.cat_file(path)) == {"k": 1} and load_manifest(path, fs=fs) == {"k": 1}
    local = fsspec.filesystem("file")
    save_manifest(str(tmp_path / "m.json"), {"k": 2}, fs=local)
    assert load_manifest(tmp_path / "m.json") == {"k": 2}


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("body, problem", [(b'{"a": ', "is not valid JSON"), (b"\xff\xfe\x00", "is not valid JSON"),
                                           (b"[1, 2]", "does not hold a JSON object (it holds a list)")])
def test_a_corrupt_manifest_is_an_error_naming_the_file(tmp_path, where, body, problem):
    location = tmp_path / "manifest.json" if where == "local" else memory_uri()
    with fsspec.open(str(location), "wb") as f:
        f.write(body)
    with pytest.raises(ManifestError) as err:
        load_manifest(location)
    assert str(err.value).startswith(f"{location} {problem}")

    class LayoutLike(ValueError):
        pass

    with pytest.raises(LayoutLike, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_manifest(location, error=LayoutLike)


def test_shard_layout_reads_a_corrupt_manifest_as_a_layout_error(tmp_path):
    from sddr_pipeline.shards.layout import LayoutError, OutputLayout

    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(LayoutError, match=f"^{tmp_path / 'manifest.json'} is not valid JSON"):
        OutputLayout(str(tmp_path)).read_manifest()
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(LayoutError, match="is not an sddr shard manifest"):
        OutputLayout(str(tmp_path)).read_manifest()


def test_fingerprint_follows_content_not_mtime(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"pixels")
    gt = np.ones((2, 3), np.float32)
    first = input_fingerprint(image, gt, None)
    assert first is not None and set(first) == {"size", "mtime_ns", "sha256", "context_sha256"}
    os.utime(image, ns=(1, 1))
    assert same_input(first, input_fingerprint(image, gt, None))
    assert not same_input(first, input_fingerprint(image, gt * 2, None))
    image.write_bytes(b"other pixels")
    assert not same_input(first, input_fingerprint(image, gt, None))
    assert input_fingerprint(tmp_path / "missing.png") is None
    # the values `sddr refine` manifests hold since issue 13, so their images are not redone
    image.write_bytes(b"pixels")
    pinned = input_fingerprint(image, gt, np.eye(3))
    assert pinned["sha256"] == "6ec9c2b0eb14010746c8bce8939303b382344b296206612eb8a907a37b2b2f37"
    assert pinned["context_sha256"] == "141f229b26d6f8ecc228631af04e98d38fe75fe374fce129bc0f1da2a49e1756"
    assert not same_input(None, first) and not same_input(first, None)


def test_only_local_outputs_are_locked(tmp_path):
    class JobError(RuntimeError):
        pass

    @locked_output(lambda args: args["out"], JobError)
    def job(out):
        return local_output(out) is not None and (local_output(out) / LOCK_NAME).exists()

    out = tmp_path / "out"
    assert job(out) is True and job(str(out)) is True and job(f"file://{out}") is True
    assert job("memory://bucket/out") is False
    with output_lock(out):
        with pytest.raises(JobError, match="in use by another run"):
            job(out)

    @locked_output(lambda args: args["out"])
    def default_error(out):
        return True

    with output_lock(out):
        with pytest.raises(OutputLockError):
            default_error(out)
    assert local_output(Path("s3:/x")) == Path("s3:/x")  # a Path is always local


def test_refine_resume_checks_through_the_helper(tmp_path):
    from sddr_pipeline.batch import RefineJobError, _prepare_output

    out = tmp_path / "out"
    identity = {"mode": "one-stage", "scale_points": 8}
    manifest = _prepare_output(out, identity, False, "/in")
    save_manifest(out / "manifest.json", {**manifest, "input": "/in"})
    assert _prepare_output(out, identity, True, "/in")["mode"] == "one-stage"
    with pytest.raises(RefineJobError, match=r"other settings \(scale_points: 8 -> None\); use a new output folder"):
        _prepare_output(out, {"mode": "one-stage"}, True, "/in")
    with pytest.raises(RefineJobError, match="made from input /in, not /other"):
        _prepare_output(out, identity, True, "/other")
    (out / "manifest.json").write_text("[]")
    with pytest.raises(RefineJobError, match=f"{out / 'manifest.json'} does not hold a JSON object"):
        _prepare_output(out, identity, True, "/in")


def test_pseudo_label_manifest_refuses_another_source_and_other_settings(tmp_path):
    from sddr_pipeline.distillation.pseudolabels import _load_manifest

    settings = {"source": "/data/a", "seed": 0, "top": 0.05}
    assert _load_manifest(tmp_path, settings)["settings"] == settings
    save_manifest(tmp_path / "manifest.json", {"format": 1, "settings": settings, "items": {}})
    assert _load_manifest(tmp_path, settings)["items"] == {}
    with pytest.raises(ValueError, match=f"^cannot resume {tmp_path}: it was made from input /data/a, not /data/b; "
                                         "use another output folder$"):
        _load_manifest(tmp_path, {**settings, "source": "/data/b"})
    with pytest.raises(ResumeMismatch, match=r"other settings \(seed: 0 -> 9; top: 0\.05 -> 0\.1\)"):
        _load_manifest(tmp_path, {**settings, "seed": 9, "top": 0.1})
