"""Memory of `sddr pipeline refine` over many small images: driver and Ray workers, sampled over time.

Writes ``--images`` synthetic RGB-D scenes (``sddr synth``, so the ``simulated`` predictor
applies) once under ``--work``, runs the CLI on them in a subprocess (a private local Ray
cluster, as a user's run) and samples, every ``--interval`` seconds, the resident set
size (RSS) of the driver process and of every Ray worker process it started
(``ray::...`` processes: the read tasks, the model actors, the progress board), and of
Ray's own daemons (raylet, GCS, agents) apart. Progress comes from the driver's progress
lines. Prints the memory at 10 %, 50 % and 100 % of the rows (the first sample at or
after each), the peaks, and writes every sample to ``WORK/memory.json``.

"private" is RSS minus the pages shared with other processes (``psutil`` ``shared``):
a worker's RSS also counts the object-store pages it maps.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/pipeline_memory.py --images 2000 --work /tmp/pm

``--pythonpath DIR`` runs another checkout of the project (e.g. a baseline commit).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

PROGRESS = re.compile(r": (\d+)/(\d+) rows")
MB = 2**20


def classify(title: str, pid: int, driver: int) -> str:
    """``driver``; ``actor`` (the model actors: Ray titles them ``ray::MapWorker(...)``);
    ``tasks`` (the job's other Ray workers: read tasks, idle workers, the progress board);
    ``ray`` (Ray's daemons and its own internal actors and agents)."""
    if pid == driver:
        return "driver"
    if not title.startswith("ray::"):
        return "ray"
    name = title[len("ray::"):]
    if name.startswith("MapWorker("):
        return "actor"
    if name.startswith("_") or name.endswith("Agent") or name == "ActorLocationTracker":
        return "ray"
    return "tasks"


GROUPS = ("driver", "actor", "tasks", "ray")


def sample(driver: psutil.Process) -> dict:
    groups: dict[str, list[tuple[str, int, int]]] = {g: [] for g in GROUPS}
    try:
        procs = [driver, *driver.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    for proc in procs:
        try:
            info = proc.memory_info()
            title = (proc.cmdline()[:1] or [proc.name()])[0][:60]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        groups[classify(title, proc.pid, driver.pid)].append((title, info.rss, info.rss - info.shared))
    out: dict = {}
    for kind, items in groups.items():
        out[kind] = {"count": len(items), "rss_mb": sum(i[1] for i in items) / MB,
                     "private_mb": sum(i[2] for i in items) / MB}
    out["processes"] = sorted((t, round(r / MB, 1), round(p / MB, 1)) for t, r, p in groups["actor"] + groups["tasks"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", default="96x128", help="HEIGHTxWIDTH of the synthetic images")
    parser.add_argument("--work", default="/tmp/sddr-pipeline-memory")
    parser.add_argument("--rows-per-shard", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--low-res", type=int, default=64)
    parser.add_argument("--high-res", type=int, default=128)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--pythonpath", default=None, help="run this checkout of sddr_pipeline (default: this one)")
    parser.add_argument("--output-name", default="out", help="output folder under WORK (removed first)")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    repo = Path(args.pythonpath or Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    sddr = [sys.executable, "-m", "sddr_pipeline.cli.main"]
    data = work / f"data-{args.images}-{args.size}"
    if not (data / "dataset.json").exists():
        subprocess.run([*sddr, "synth", str(data), "--count", str(args.images), "--size", args.size, "--seed", "0"],
                       env=env, cwd=work, check=True)
    out = work / args.output_name
    subprocess.run(["rm", "-rf", str(out)], check=True)
    config = work / "memory.yaml"
    config.write_text("progress_interval_s: 0\nstall_timeout_s: 900\n")  # a line whenever the driver learns of rows
    cmd = [*sddr, "pipeline", "refine", "--config", str(config), "--input", str(data), "--output", str(out),
           "--predictor", "simulated", "--low-res", str(args.low_res), "--high-res", str(args.high_res),
           "--actors", "1", "--gpus-per-actor", "0", "--torch-threads", "1", "--batch-size", str(args.batch_size),
           "--rows-per-shard", str(args.rows_per_shard), "--num-cpus", str(args.num_cpus),
           "--object-store-memory", str(200 * MB)]
    print("command:", f"cd {work} && PYTHONPATH={repo} OMP_NUM_THREADS={env['OMP_NUM_THREADS']}", shlex.join(cmd), flush=True)

    t0 = time.monotonic()
    # run from WORK: `python -m` and Ray's workers put the current folder first on sys.path
    proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = {"done": 0, "total": args.images}
    lines: list[str] = []

    def read_progress() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())
            m = PROGRESS.search(line)
            if m:
                state["done"], state["total"] = int(m.group(1)), int(m.group(2))

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    driver = psutil.Process(proc.pid)
    samples = []
    while proc.poll() is None:
        s = sample(driver)
        if s:
            s.update(t=round(time.monotonic() - t0, 2), done=state["done"], total=state["total"])
            samples.append(s)
        time.sleep(args.interval)
    stdout = proc.stdout.read() if proc.stdout else ""
    reader.join(10)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        print("\n".join(lines[-20:]), file=sys.stderr)
        print(f"the pipeline failed (rc {proc.returncode})", file=sys.stderr)
        return 1
    running = [s for s in samples if s["driver"]["count"] and s["actor"]["count"]]
    print(stdout.strip())
    print(f"{args.images} images of {args.size} in {seconds:.0f} s ({args.images / seconds:.2f} img/s, start-up and "
          f"shut-down included); {len(samples)} samples every {args.interval:g} s; MB = MiB, RSS (private)")
    print(f"{'point':>12s} {'t s':>5s} {'rows':>10s} {'driver':>15s} {'model actor':>15s} {'other workers':>19s} "
          f"{'ray daemons':>12s}")

    def cell(s: dict, kind: str, count: bool = False) -> str:
        g = s[kind]
        text = f"{g['rss_mb']:5.0f} ({g['private_mb']:4.0f})"
        return f"{g['count']:2d}: {text}" if count else text

    def show(label: str, s: dict) -> None:
        print(f"{label:>12s} {s['t']:5.0f} {s['done']:>5d}/{s['total']:<4d} {cell(s, 'driver'):>15s} "
              f"{cell(s, 'actor'):>15s} {cell(s, 'tasks', True):>19s} {s['ray']['rss_mb']:10.0f}")

    working = [s for s in running if s["done"] > 0]
    if working:
        show("first rows", working[0])
    for pct in (10, 50, 100):
        at = next((s for s in working if s["done"] * 100 >= pct * s["total"]), None)
        if at:
            show(f"{pct}% rows", at)
        elif working:
            show("last sample", working[-1])

    def peaks(label: str, chosen: list[dict]) -> None:
        if chosen:
            print(f"{label:>12s} {'':5s} {'':10s} " + " ".join(
                f"{max(s[k]['rss_mb'] for s in chosen):{w}.0f}" for k, w in (("driver", 8), ("actor", 15), ("tasks", 16),
                                                                             ("ray", 20))))

    peaks("peak, start", [s for s in samples if s["done"] == 0])
    peaks("peak, rows", working)
    if working:
        print("job workers at the last sample with rows:",
              "; ".join(f"{t} {r:.0f} ({p:.0f})" for t, r, p in working[-1]["processes"]))
    manifest = json.loads((out / "manifest.json").read_text())
    print("manifest counts:", manifest["counts"])
    (work / "memory.json").write_text(json.dumps({"command": cmd, "pythonpath": str(repo), "seconds": seconds,
                                                  "samples": samples, "log": lines}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
