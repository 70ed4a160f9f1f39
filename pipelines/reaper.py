"""Kill a private Ray cluster's processes when its driver dies, even by SIGKILL (Linux).

Ray's head processes (GCS, raylet) die with the driver that started them, but the agents
the raylet starts (DashboardAgent, RuntimeEnvAgent) only watch whether the raylet's pid
still exists; where PID 1 does not reap orphans (many containers) the dead raylet stays a
zombie and the agents run on for good. So a driver that starts a local cluster also
starts this small process in its own session: while the driver lives it records the
driver's descendants (pid and start time) every ``interval`` seconds; once the driver is
gone it SIGKILLs every recorded process that is still the same process, and exits.

Run as ``python -m sddr_pipeline.pipelines.reaper DRIVER_PID``; :func:`start` does that.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of ``pid`` from /proc, or None if it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], fields[19]


def alive(pid: int, start: str | None = None) -> bool:
    """``pid`` exists, is not a zombie, and (if given) started at ``start``."""
    st = _stat(pid)
    return st is not None and st[1] != "Z" and (start is None or st[2] == start)


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> start time."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] != "Z":
                parents[int(entry.name)] = (st[0], st[2])
    out: dict[int, str] = {}
    for pid, (ppid, start) in parents.items():
        seen, p = set(), ppid
        while p in parents and p not in seen and p != root:
            seen.add(p)
            p = parents[p][0]
        if p == root:
            out[pid] = start
    return out


def watch(driver: int, interval: float = 0.5) -> int:
    """Track ``driver``'s descendants until it dies, then kill them; returns how many."""
    me = os.getpid()
    first = _stat(driver)
    if first is None:
        return 0
    tracked: dict[int, str] = {}
    while alive(driver, first[2]):
        tracked.update({p: s for p, s in descendants(driver).items() if p != me})
        time.sleep(interval)
    killed = 0
    for pid, start in tracked.items():
        if alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


_started: dict[int, subprocess.Popen] = {}


def start() -> subprocess.Popen | None:
    """Start this process's reaper, once (no-op without /proc); it outlives a killed driver
    and watches every cluster the process starts after it."""
    if not PROC.is_dir():
        return None
    pid = os.getpid()
    running = _started.get(pid)
    if running is not None and running.poll() is None:
        return running
    _started[pid] = subprocess.Popen(
        [sys.executable, "-m", "sddr_pipeline.pipelines.reaper", str(pid)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    return _started[pid]


if __name__ == "__main__":
    watch(int(sys.argv[1]))
