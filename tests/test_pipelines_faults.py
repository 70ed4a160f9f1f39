"""Faults around a pipeline run: a stale Ray cluster file, a killed driver, an object store
that goes down mid-run, Ray settings that contradict each other.

The S3 test runs a moto server on 127.0.0.1 that is stopped and started again on the
same port while the job runs; its clients open a new connection per request and have
botocore's own retries off, so the outage reaches the project's retry. The Ray start-up
test runs the CLI in subprocesses with a private ``RAY_TMPDIR`` (short: Ray's socket
paths must fit 107 bytes) holding a ``ray_current_cluster`` file that names a dead address.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_pipelines_ray import RES, assert_exactly_once, ray_cluster, weights, write_images, write_predictor  # noqa: F401

DEAD_ADDRESS = "127.0.0.1:9"  # nothing listens on the discard port
HANG_GUARD_S = 300


pytestmark = pytest.mark.usefixtures("hang_guard")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sddr_pipeline.cli.main", *args]


def test_num_cpus_with_a_ray_address_is_a_one_line_cli_error(tmp_path, capsys):
    from sddr_pipeline.cli.main import main

    write_images(tmp_path / "in", ["a"])
    rc = main(["pipeline", "refine", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
               "--predictor", "simulated", "--ray-address", DEAD_ADDRESS, "--num-cpus", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == (f"sddr pipeline refine: ray.num_cpus: sizes the local cluster started when no address is given; "
                   f"the cluster at {DEAD_ADDRESS} has its own resources: leave it out or drop the address\n")
    assert not (tmp_path / "out").exists()


def test_ray_address_comes_from_the_environment_like_ray_init(tmp_path, capsys, monkeypatch):
    from pipelines.config import RayConfig
    from sddr_pipeline.cli.main import main

    monkeypatch.setenv("RAY_ADDRESS", DEAD_ADDRESS)
    assert RayConfig().address == DEAD_ADDRESS and RayConfig(address="other:1").address == "other:1"
    write_images(tmp_path / "in", ["a"])
    rc = main(["pipeline", "refine", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
               "--predictor", "simulated", "--num-cpus", "2"])
    assert rc == 2
    assert capsys.readouterr().err == (
        f"sddr pipeline refine: ray.num_cpus: sizes the local cluster started when no address is given; "
        f"the cluster at {DEAD_ADDRESS} (RAY_ADDRESS) has its own resources: leave it out or drop the address\n")
    monkeypatch.delenv("RAY_ADDRESS")
    assert RayConfig().address is None


# ------------------------------------------------------------------ Ray start-up and shutdown


def ray_processes(ray_tmpdir: str) -> list[str]:
    """Command lines of the processes started with ``RAY_TMPDIR=ray_tmpdir`` (this user's)."""
    marker = f"RAY_TMPDIR={ray_tmpdir}\0".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:
            continue
    return found


def wait_for(condition, timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


@pytest.mark.slow
def test_stale_ray_cluster_file_is_ignored_and_a_killed_driver_leaves_no_ray_processes(tmp_path, weights):
    ray_tmpdir = tempfile.mkdtemp(prefix="sddr-ray-", dir="/tmp")
    try:
        (Path(ray_tmpdir) / "ray").mkdir()
        (Path(ray_tmpdir) / "ray" / "ray_current_cluster").write_text(DEAD_ADDRESS + "\n")
        names = [f"img{i}" for i in range(6)]
        write_images(tmp_path / "in", names)
        out = tmp_path / "out"
        args = cli("pipeline", "refine", "--input", str(tmp_path / "in"), "--output", str(out),
                   "--predictor", write_predictor(tmp_path / "mods", delay=1.0), "--weights", weights,
                   "--low-res", str(RES["low_res"]), "--high-res", str(RES["high_res"]), "--num-cpus", "2",
                   "--actors", "1", "--cpus-per-actor", "0.5", "--batch-size", "1", "--rows-per-shard", "2",
                   "--stall-timeout", "90", "--quiet")
        env = {**os.environ, "RAY_TMPDIR": ray_tmpdir, "OMP_NUM_THREADS": "1"}

        log = tmp_path / "first-run.log"
        with log.open("wb") as sink:
            driver = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=sink)
        try:
            started = wait_for(lambda: (out / "shards" / "part-00000.parquet").exists() or driver.poll() is not None, 120)
            assert started and driver.poll() is None, (
                f"the first run wrote no shard in 120 s (rc {driver.poll()}): {log.read_text()[-3000:]}")
            assert ray_processes(ray_tmpdir)
        finally:
            driver.kill()
            driver.wait()
        t_kill = time.monotonic()
        assert wait_for(lambda: not ray_processes(ray_tmpdir), 60), f"left running: {ray_processes(ray_tmpdir)}"
        assert time.monotonic() - t_kill < 60

        t0 = time.monotonic()
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, done.stderr[-3000:]
        assert time.monotonic() - t0 < 150
        assert "0 failed" in done.stdout and "[total: 6 done, 0 failed of 6]" in done.stdout
        assert "Token authentication is enabled" not in done.stderr
        assert_exactly_once(out, set(names))
        assert wait_for(lambda: not ray_processes(ray_tmpdir), 30), f"left running: {ray_processes(ray_tmpdir)}"
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


@pytest.mark.slow
def test_an_unreachable_ray_address_stops_under_the_stall_watchdog(tmp_path):
    write_images(tmp_path / "in", ["a"])
    ray_tmpdir = tempfile.mkdtemp(prefix="sddr-ray-", dir="/tmp")
    try:
        t0 = time.monotonic()
        args = cli("pipeline", "refine", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                   "--predictor", "simulated", "--ray-address", DEAD_ADDRESS, "--stall-timeout", "5", "--quiet")
        done = subprocess.run(args, env={**os.environ, "RAY_TMPDIR": ray_tmpdir}, capture_output=True, text=True,
                              timeout=150)
        assert time.monotonic() - t0 < 120
        assert done.returncode == 1
        assert done.stderr.splitlines()[-1] == (f"sddr pipeline refine: Ray could not start or reach the cluster at "
                                                f"{DEAD_ADDRESS} within 5 s (stall_timeout_s); stopped before any work")
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


# ------------------------------------------------------------------------ object-store outage


@pytest.fixture
def moto_s3():
    """A moto server on 127.0.0.1 that :meth:`outage` stops and restarts on the same port
    (moto's state lives in the process, so the bucket survives)."""
    server_mod = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
               "config_kwargs": {"retries": {"max_attempts": 1},
                                 "connector_args": {"force_close": True, "keepalive_timeout": None}}}
    state = SimpleNamespace(server=server, options=options, events=[], restarter=None)
    state.fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    state.fs.mkdir("faults-bucket")

    def outage(seconds: float) -> None:
        state.server.stop()
        state.events.append(("down", time.monotonic()))

        def restart() -> None:
            time.sleep(seconds)
            state.server = server_mod.ThreadedMotoServer(ip_address=host, port=port, verbose=False)
            state.server.start()
            state.events.append(("up", time.monotonic()))

        state.restarter = threading.Thread(target=restart, daemon=True)
        state.restarter.start()

    state.outage = outage
    try:
        yield state
    finally:
        if state.restarter is not None:
            state.restarter.join(30)
        state.server.stop()


def test_object_store_outage_mid_run_is_waited_out_exactly_once(moto_s3, tmp_path, weights, ray_cluster, caplog, capfd):
    from sddr_pipeline.pipelines.refine import run_refine_pipeline
    from sddr_pipeline.shards import read_errors, read_shards

    names = [f"s{i}" for i in range(6)]
    write_images(tmp_path / "in", names)
    moto_s3.fs.put(str(tmp_path / "in"), "faults-bucket/job/images", recursive=True)

    def stop_after_first_shard() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            moto_s3.fs.invalidate_cache()
            if moto_s3.fs.exists("faults-bucket/job/out/shards/part-00000.parquet"):
                moto_s3.outage(4.0)
                return
            time.sleep(0.2)

    trigger = threading.Thread(target=stop_after_first_shard, daemon=True)
    trigger.start()
    with caplog.at_level(logging.WARNING, logger="sddr_pipeline.shards.io"):
        report = run_refine_pipeline("s3://faults-bucket/job/images", "s3://faults-bucket/job/out",
                                     write_predictor(tmp_path / "mods", delay=0.5), weights, gpus_per_actor=0, actors=1,
                                     cpus_per_actor=0.5, batch_size=1, rows_per_shard=2, storage_options=moto_s3.options,
                                     stall_timeout_s=90.0, progress=None, **RES)
    finished = time.monotonic()
    trigger.join(5)
    assert [e for e, _ in moto_s3.events] == ["down", "up"] and moto_s3.events[0][1] < finished
    seen: list[str] = []

    def retried() -> bool:  # in the driver (the manifest) or in a worker (reads, shard files), whose log Ray forwards
        seen.extend(capfd.readouterr())
        lines = [r.getMessage() for r in caplog.records] + "".join(seen).splitlines()
        return any("retry" in line and "EndpointConnectionError" in line for line in lines)

    assert wait_for(retried, 20), "no storage retry was logged"
    assert (report.rows_written, report.rows_failed, report.shards_skipped) == (6, 0, 0)
    ids = read_shards("s3://faults-bucket/job/out", moto_s3.options).column("id").to_pylist()
    assert sorted(ids) == [f"s{i}" for i in range(6)] and len(ids) == len(set(ids))
    assert read_errors("s3://faults-bucket/job/out", moto_s3.options).num_rows == 0


def test_a_storage_failure_is_reported_in_one_line(tmp_path, capsys):
    from sddr_pipeline.cli.main import main

    rc = main(["pipeline", "refine", "--input", "s3://faults-bucket/in", "--output", str(tmp_path / "out"),
               "--predictor", "simulated", "--io-retry-timeout", "1", "--storage-option",
               f'client_kwargs={{"endpoint_url": "http://{DEAD_ADDRESS}"}}', "--storage-option", "key=k",
               "--storage-option", "secret=s", "--storage-option", 'config_kwargs={"retries": {"max_attempts": 1}}'])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("sddr pipeline refine: could not start: StorageError: listing "
                                                   "s3://faults-bucket/in failed after ")
    assert "EndpointConnectionError" in err and "rerun the same command" in err
    assert not (tmp_path / "out").exists()
