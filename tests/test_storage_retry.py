"""Transient storage errors: which errors are retried, for how long, and the one-line
report of a job that still fails. No Ray, no server: errors are built directly."""
from __future__ import annotations

import errno

import pytest

from sddr_pipeline.shards.io import StorageError, is_transient, retry

botocore_exceptions = pytest.importorskip("botocore.exceptions")


def client_error(code: str, status: int):
    return botocore_exceptions.ClientError({"Error": {"Code": code, "Message": "m"},
                                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def s3fs_translated(code: str, status: int, number: int) -> OSError:
    """What s3fs raises for a ClientError: an OSError whose cause is the ClientError."""
    exc = OSError(number, "translated")
    exc.__cause__ = client_error(code, status)
    return exc


def test_transient_errors_are_told_from_permanent_ones():
    aiohttp = pytest.importorskip("aiohttp")
    transient = [
        botocore_exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        botocore_exceptions.ConnectionClosedError(endpoint_url="http://127.0.0.1:9"),
        botocore_exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
        aiohttp.ServerDisconnectedError(),
        ConnectionResetError("reset by peer"),
        TimeoutError("read timed out"),
        client_error("SlowDown", 503),
        client_error("Throttling", 400),
        client_error("InternalError", 500),
        client_error("TooManyRequests", 429),
        s3fs_translated("SlowDown", 503, errno.EBUSY),
        s3fs_translated("Whatever", 502, errno.EIO),
    ]
    permanent = [
        FileNotFoundError("gone"),
        PermissionError("denied"),
        s3fs_translated("AccessDenied", 403, errno.EACCES),
        client_error("NoSuchBucket", 404),
        client_error("NotImplemented", 501),
        OSError(errno.ENOSPC, "disk full"),
        ValueError("bad input"),
        StorageError("already retried"),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_retry_waits_out_an_outage_shorter_than_its_limit():
    fake = FakeTime()
    calls = {"n": 0}

    def endpoint_down_for_40_s():
        calls["n"] += 1
        if fake.now < 40.0:
            raise botocore_exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return "ok"

    assert retry(endpoint_down_for_40_s, what="reading x", sleep=fake.sleep, clock=fake.clock) == "ok"
    assert calls["n"] > 5 and 40.0 <= fake.now <= 60.0
    assert max(fake.sleeps) <= 15.0  # backoff capped at max_delay (10 s) plus jitter


def test_retry_gives_up_when_its_time_limit_is_spent():
    fake = FakeTime()

    def down():
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(StorageError, match=r"reading y failed after \d+ attempts in 10.0 s \(storage retry limit 10 s\): "
                                           r"ConnectionRefusedError: connection refused"):
        retry(down, what="reading y", max_wait_s=10.0, sleep=fake.sleep, clock=fake.clock)
    assert fake.now == pytest.approx(10.0)
    with pytest.raises(StorageError, match="after 1 attempts"):
        retry(down, what="reading y", max_wait_s=0.0, sleep=fake.sleep, clock=fake.clock)


def test_error_summary_is_one_line_without_ray_wrappers():
    from sddr_pipeline.pipelines.runner import error_summary

    inner = botocore_exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    wrapped = RuntimeError("first line\n" + "  File x, line 1\n" * 200)
    assert error_summary(wrapped) == "RuntimeError: first line"
    assert error_summary(ValueError("x" * 5000)) == "ValueError: " + "x" * 385 + "..."
    ray_exceptions = pytest.importorskip("ray.exceptions")
    remote = ray_exceptions.RayTaskError("read_inputs", "Traceback (most recent call last):\n" + "  frame\n" * 240, inner)
    assert error_summary(remote) == 'EndpointConnectionError: Could not connect to the endpoint URL: "http://127.0.0.1:9"'
