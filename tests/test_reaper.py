"""The reaper kills a dead driver's leftover descendants, and nothing else."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sddr_pipeline.pipelines import reaper

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="the reaper reads /proc (Linux)")

# a "driver" that starts an orphan-to-be grandchild in its own session (as the raylet's
# agents end up), prints both pids, then waits to be killed
DRIVER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_killed_drivers_descendants_are_killed_and_bystanders_are_not():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        child = int(driver.stdout.readline())
        watcher = subprocess.Popen([sys.executable, "-m", "sddr_pipeline.pipelines.reaper", str(driver.pid)],
                                   start_new_session=True)
        deadline = time.monotonic() + 30
        while child not in reaper.descendants(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # at least one scan of the watcher has seen the child
        assert reaper.alive(child)
        driver.kill()
        driver.wait()
        assert watcher.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while reaper.alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not reaper.alive(child)
        assert bystander.poll() is None
    finally:
        for p in (bystander, driver):
            p.kill()
            p.wait()


def test_descendants_follow_the_tree():
    outer = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        child = int(outer.stdout.readline())
        tree = reaper.descendants(outer.pid)
        assert child in tree and outer.pid not in tree
        assert outer.pid in reaper.descendants(reaper.os.getpid())
    finally:
        outer.kill()
        outer.wait()
        subprocess.run(["kill", "-9", str(child)], check=False)
