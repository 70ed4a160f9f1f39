"""One writer per output folder (sddr_pipeline.io.lock): refusal naming the holder,
stale-lock take-over, release on exit and on exceptions."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from sddr_pipeline.io.lock import LOCK_NAME, OutputLockError, acquire, output_lock, read_lock, release


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01T00:00:00+00:00", "token": "old"}
    (folder / LOCK_NAME).write_text(json.dumps(holder))


def test_lock_records_the_holder_and_is_released_on_exit(tmp_path):
    out = tmp_path / "out"
    with output_lock(out) as me:
        holder = read_lock(out / LOCK_NAME)
        assert holder == me
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        (out / "result.txt").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(OutputLockError) as err:
            acquire(out)
    message = str(err.value)
    assert f"in use by another run (pid {os.getpid()} on {socket.gethostname()}" in message
    assert str(out / LOCK_NAME) in message
    assert not (out / LOCK_NAME).exists()


def test_lock_of_a_live_process_is_refused(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(out, proc.pid)
        with pytest.raises(OutputLockError, match=f"pid {proc.pid} on "):
            acquire(out)
    finally:
        proc.kill()
        proc.wait()
    assert read_lock(out / LOCK_NAME)["pid"] == proc.pid


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    write_lock(out, dead_pid())
    with output_lock(out) as me:
        assert read_lock(out / LOCK_NAME) == me and me["pid"] == os.getpid()
    assert list(out.iterdir()) == []


def test_lock_held_on_another_host_is_refused(tmp_path):
    out = tmp_path / "out"
    write_lock(out, dead_pid(), host="some-other-host")
    with pytest.raises(OutputLockError, match="pid .* on some-other-host"):
        acquire(out)


def test_lock_is_released_when_the_block_raises(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyError):
        with output_lock(out):
            (out / "partial.txt").write_text("x")
            raise KeyError("boom")
    assert not (out / LOCK_NAME).exists()
    with output_lock(out):
        pass


def test_release_keeps_a_lock_that_is_not_ours(tmp_path):
    out = tmp_path / "out"
    me = acquire(out)
    write_lock(out, os.getpid())
    release(out, me)
    assert read_lock(out / LOCK_NAME)["token"] == "old"


def test_unreadable_lock_is_refused_naming_the_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("{half")
    with pytest.raises(OutputLockError, match="lock file .*unreadable"):
        acquire(out)


def test_a_file_as_output_is_refused(tmp_path):
    path = tmp_path / "out"
    path.write_text("not a folder")
    with pytest.raises(OutputLockError, match="exists and is not a folder"):
        acquire(path)


def test_pipeline_refuses_a_held_local_output_before_any_work(tmp_path, monkeypatch):
    from sddr_pipeline.pipelines import runner
    from sddr_pipeline.pipelines.refine import run_refine_pipeline

    def started(config):
        pytest.fail("the job started on an OUTPUT held by another run")

    monkeypatch.setattr(runner, "preflight", started)
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(runner.PipelineError, match=f"output {out} is in use by another run \\(pid {os.getpid()} on "):
            run_refine_pipeline(str(tmp_path / "in"), str(out), "simulated", "default", progress=None)
        with pytest.raises(runner.PipelineError, match="in use by another run"):
            run_refine_pipeline(str(tmp_path / "in"), f"file://{out}", "simulated", "default", progress=None)


def test_only_local_pipeline_outputs_are_locked():
    from pathlib import Path

    from sddr_pipeline.io.resumable import local_output

    assert local_output("/data/out") == Path("/data/out")
    assert local_output("rel/out") == Path("rel/out")
    assert local_output("file:///data/out") == Path("/data/out")
    assert local_output("s3://bucket/out") is None


def test_decorated_job_holds_the_lock_and_raises_its_own_error(tmp_path):
    from sddr_pipeline.io.lock import holding_output_lock

    class JobError(RuntimeError):
        pass

    @holding_output_lock(lambda args: args["out"], JobError)
    def job(out, value):
        return read_lock(out / LOCK_NAME)["pid"], value

    @holding_output_lock(lambda args: None, JobError)
    def unlocked(out):
        return (out / LOCK_NAME).exists()

    out = tmp_path / "out"
    assert job(out, value=7) == (os.getpid(), 7)
    assert not out.exists()  # created for the job, left empty, removed
    with output_lock(out):
        with pytest.raises(JobError, match="in use by another run"):
            job(out, 7)
        assert unlocked(out) is True
