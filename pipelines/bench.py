"""``sddr bench pipeline``: the Ray refine pipeline against a plain loop, in one run.

Same inputs (synthetic scenes with ground truth, so the ``simulated`` predictor applies),
same model (``sddr-small`` architecture, random weights: cost does not depend on weight
values), same work per image (fetch bytes, decode, predict low/high, refine one-stage,
encode, write Parquet shards):

- ``loop``: one process, torch using every core, calling the pipeline's own read and
  stage code image by image, writing shards itself; ``loop_1thread``: the same with one
  torch thread (a reference: on a busy machine multi-threaded torch can be much slower);
- ``ray_1``/``ray_2``: :func:`run_refine_pipeline` with 1 and 2 single-threaded CPU
  actors on a local cluster started once before (its start-up is reported apart).

Each item is timed once, wall clock, start-up included (actors import and load their
models inside the run; the loop loads its models inside its timing too);
``first_result_seconds`` is the time to the first finished image and
``mean_image_seconds`` the mean per-image work (decode, predict, refine, encode) as the
stage measured it. Peak memory is the largest sum of proportional set sizes (PSS, shared
pages split between processes) of the driver and every process it started, sampled every
0.2 s. The machine's load average is recorded, since it is shared.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PipelineBenchConfig:
    images: int = 48
    height: int = 192
    width: int = 256
    batch_size: int = 4
    rows_per_shard: int = 16
    low_res: int = 128
    high_res: int = 256
    object_store_memory: int = 200 * 2**20
    seed: int = 0


class MemorySampler:
    """Peak PSS (RSS where PSS is unavailable) of this process and its descendants."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self.psutil = psutil
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def total(self) -> int:
        me = self.psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
        return total

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.total())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.total())


def _plain_loop(dataset_root: str, weights: str, cfg: PipelineBenchConfig, out: Path, threads: int) -> dict[str, Any]:
    import torch

    from sddr_pipeline.shards.io import filesystem, write_table
    from sddr_pipeline.shards.schema import DEPTH_SCHEMA

    from .inputs import list_inputs
    from .stage import RefineStage, read_inputs

    previous = torch.get_num_threads()
    t0 = time.perf_counter()
    inputs = list_inputs(dataset_root, kind="dataset")
    stage = RefineStage("simulated", weights, device="cpu", torch_threads=threads, low_res=cfg.low_res, high_res=cfg.high_res)
    fs, root = filesystem(str(out))
    rows: list[dict[str, Any]] = []
    shard = 0
    first = None
    work: list[float] = []
    try:
        for k, (id_, source) in enumerate(zip(inputs.ids, inputs.sources)):
            batch = read_inputs(pa.table({"id": [id_], "source": [source]}), dataset_root=inputs.root,
                                dataset_layout=inputs.layout)
            rows.extend(stage(batch).to_pylist())
            work.append(rows[-1]["seconds"])
            first = first if first is not None else time.perf_counter() - t0
            if len(rows) == cfg.rows_per_shard or k == len(inputs.ids) - 1:
                table = pa.Table.from_pylist([{c: r[c] for c in DEPTH_SCHEMA.names} for r in rows], schema=DEPTH_SCHEMA)
                write_table(fs, f"{root}/part-{shard:05d}.parquet", table)
                rows, shard = [], shard + 1
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)
    return {"threads": threads, "seconds": seconds, "first_result_seconds": first, "images_per_s": len(work) / seconds,
            "mean_image_seconds": sum(work) / len(work)}


def run_pipeline_bench(cfg: PipelineBenchConfig = PipelineBenchConfig(), progress: Progress | None = None) -> dict[str, Any]:
    """Time the loop, then Ray with 1 and 2 actors, on the same inputs; returns a JSON-able report."""
    import ray

    from sddr_pipeline.data import write_synthetic_dataset
    from sddr_pipeline.models import Refiner
    from sddr_pipeline.shards import read_shards

    from .refine import run_refine_pipeline

    say = progress or (lambda _line: None)
    load_before = os.getloadavg()
    report: dict[str, Any] = {"config": asdict(cfg), "cpus": os.cpu_count(), "items": {}}
    with tempfile.TemporaryDirectory(prefix="sddr-bench-pipeline-") as tmp:
        work = Path(tmp)
        say(f"writing {cfg.images} synthetic scenes of {cfg.height}x{cfg.width}")
        data = write_synthetic_dataset(work / "data", count=cfg.images, height=cfg.height, width=cfg.width, seed=cfg.seed)
        weights = Refiner.from_config("sddr-small").save_pretrained(work / "weights")
        for name, threads in (("loop", os.cpu_count() or 1), ("loop_1thread", 1)):
            say(f"plain loop, {threads} torch thread(s)")
            with MemorySampler() as mem:
                loop = _plain_loop(str(data), str(weights), cfg, work / name, threads)
            report["items"][name] = {**loop, "peak_pss_mb": mem.peak / 2**20}
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count() or 1, object_store_memory=cfg.object_store_memory,
                 include_dashboard=False, log_to_driver=False)  # private cluster, as runner.ray_session starts
        try:
            report["ray_init_seconds"] = time.perf_counter() - t0
            report["ray_idle_pss_mb"] = MemorySampler().total() / 2**20
            for actors in (1, 2):
                say(f"ray, {actors} actor(s)")
                cpus = min(1.0, ((os.cpu_count() or 1) - 0.25) / actors)
                with MemorySampler() as mem:
                    run = run_refine_pipeline(
                        str(data), str(work / f"ray{actors}"), "simulated", str(weights), "one-stage", actors=actors,
                        gpus_per_actor=0, batch_size=cfg.batch_size, rows_per_shard=cfg.rows_per_shard,
                        low_res=cfg.low_res, high_res=cfg.high_res, cpus_per_actor=cpus, torch_threads=1,
                        device="cpu", progress=None,
                    )
                work_s = read_shards(str(work / f"ray{actors}"), columns=["seconds"]).column("seconds").to_pylist()
                report["items"][f"ray_{actors}"] = {
                    "actors": actors, "cpus_per_actor": cpus, "torch_threads": 1, "seconds": run.seconds,
                    "first_result_seconds": run.first_result_seconds, "images_per_s": run.images_per_s,
                    "mean_image_seconds": sum(work_s) / len(work_s), "rows_written": run.rows_written,
                    "rows_failed": run.rows_failed, "peak_pss_mb": mem.peak / 2**20,
                }
        finally:
            ray.shutdown()
    loop_rate = report["items"]["loop"]["images_per_s"]
    report["ratios"] = {k: v["images_per_s"] / loop_rate for k, v in report["items"].items() if k != "loop"}
    report["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'item':13s} {'img/s':>7s} {'seconds':>8s} {'first':>6s} {'s/img':>7s} {'peak MB':>8s} {'vs loop':>8s}"]
    for name, item in report["items"].items():
        first = item.get("first_result_seconds")
        ratio = report["ratios"].get(name, 1.0)
        lines.append(f"{name:13s} {item['images_per_s']:7.2f} {item['seconds']:8.1f} "
                     f"{first if first is not None else float('nan'):6.1f} {item['mean_image_seconds']:7.3f} "
                     f"{item['peak_pss_mb']:8.0f} {ratio:8.2f}x")
    load = report["load_average"]
    lines.append(f"ray init {report.get('ray_init_seconds', float('nan')):.1f} s, idle cluster {report.get('ray_idle_pss_mb', 0):.0f} MB; "
                 f"{report['cpus']} CPUs, load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after")
    return "\n".join(lines)
