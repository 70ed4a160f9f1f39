"""Carry a long training run across sessions and machines through git.

A run's output folder (``runs/NAME``) is not versioned; its newest verified checkpoint is:

    .venv/bin/python scripts/checkpoint_sync.py save    runs/long checkpoints/long
    .venv/bin/python scripts/checkpoint_sync.py restore checkpoints/long runs/long

``save`` copies the newest checkpoint whose files match their recorded sha256 (weights,
optimizer state + RNG, the weight average when the run keeps one, JSON record) and the run's ``log.jsonl`` (every step's seconds: what
the run has spent) into the versioned folder, replacing what was there, atomically per
file. ``restore`` copies them back into a run folder that has no newer checkpoint, after
which ``sddr train --config NAME --output runs/NAME`` resumes bit for bit. Both print what
they did and refuse to overwrite a newer checkpoint.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sddr_pipeline.io.atomic import atomic_write_bytes
from sddr_pipeline.training.trainer import ResumeError, latest_checkpoint

LOG = "log.jsonl"


def _copy(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, src.read_bytes())


def _files(json_path: Path, record: dict) -> list[Path]:
    names = [record["weights"], record["optimizer"], *([record["ema"]] if "ema" in record else [])]
    return [json_path.parent / name for name in names] + [json_path]


def save(run: Path, store: Path) -> int:
    found = latest_checkpoint(run / "checkpoints")
    if found is None:
        print(f"checkpoint_sync: no verified checkpoint in {run / 'checkpoints'}", file=sys.stderr)
        return 2
    path, record = found
    old = latest_checkpoint(store)
    if old is not None and old[1]["step"] > record["step"]:
        print(f"checkpoint_sync: {store} holds step {old[1]['step']}, newer than {run}'s {record['step']}", file=sys.stderr)
        return 2
    store.mkdir(parents=True, exist_ok=True)
    keep = {p.name for p in _files(path, record)} | {LOG}
    for src in _files(path, record):
        _copy(src, store / src.name)
    if (run / LOG).is_file():
        _copy(run / LOG, store / LOG)
    for stale in store.iterdir():
        if stale.is_file() and stale.name not in keep:
            stale.unlink()
    print(f"checkpoint_sync: saved step {record['step']} of {record['total_steps']} to {store}")
    return 0


def restore(store: Path, run: Path) -> int:
    found = latest_checkpoint(store)
    if found is None:
        print(f"checkpoint_sync: no verified checkpoint in {store}", file=sys.stderr)
        return 2
    path, record = found
    have = latest_checkpoint(run / "checkpoints")
    if have is not None and have[1]["step"] >= record["step"]:
        print(f"checkpoint_sync: {run} already has step {have[1]['step']} (>= {record['step']}); nothing to do")
        return 0
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    for src in _files(path, record):
        _copy(src, run / "checkpoints" / src.name)
    if (store / LOG).is_file():
        shutil.copyfile(store / LOG, run / LOG)
    print(f"checkpoint_sync: restored step {record['step']} into {run}; resume with sddr train --output {run}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("save", "restore"))
    p.add_argument("source", type=Path)
    p.add_argument("target", type=Path)
    args = p.parse_args(argv)
    try:
        return save(args.source, args.target) if args.action == "save" else restore(args.source, args.target)
    except ResumeError as exc:
        print(f"checkpoint_sync: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
