"""The driver of a shard job: plan, run the Ray stages, commit whole shards, resume.

1. List the input and sort its ids; shard N gets the ids at positions
   ``[N * rows_per_shard, (N + 1) * rows_per_shard)`` (:class:`ShardPlan`).
2. Open the output: a new one gets a manifest; an existing one must have been made with
   the same settings and the same input, and its temporaries are removed. Shards the
   manifest lists as completed (and whose files exist) are skipped.
3. Run one row per pending shard through read tasks (:func:`~.stage.read_shard`: every
   input of the shard) and the model actor pool (:class:`~.stage.ShardStage`). The WORKERS
   write each shard's error file, then its shard file, and return a small summary; the
   driver receives only summaries (never maps) and commits each one to the manifest
   (:class:`ShardCollector`; a retried shard's second summary is ignored). Rows done so
   far reach the driver through a small :class:`ProgressBoard` actor, for progress lines
   and the stall watchdog. A crash at any point leaves complete files only, and a rerun
   redoes exactly the shards that were not recorded (rewriting, under the same name, any
   file a worker published that the manifest does not list).
"""
from __future__ import annotations

import _thread
import contextlib
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pyarrow as pa

from sddr_pipeline import __version__
from sddr_pipeline.io.resumable import check_settings, locked_output
from sddr_pipeline.shards.io import StorageError
from sddr_pipeline.shards.layout import LayoutError, OutputLayout, ShardPlan, now, published_shards, shard_name
from sddr_pipeline.shards.schema import FORMAT, KIND_POINTS

from . import reaper
from .config import ConfigError, PipelineConfig, RayConfig
from .inputs import CAMERA_FIELDS, InputSet, list_inputs
from .resources import Resources, resolve_resources
from .stage import ShardStage, pack_rows, read_shard

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
#: Seconds between the driver's reads of the workers' progress.
PROGRESS_POLL_S = 0.5
#: Shards queued on one actor besides the one it works on (whole shards are large units).
SHARDS_IN_FLIGHT_PER_ACTOR = 2
#: Ray log records that are notices, not problems: (logger, start of the message).
RAY_NOTICES: tuple[tuple[str, str], ...] = (
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray cluster"),
)


class PipelineError(RuntimeError):
    """The job could not run to the end; completed shards stay valid for a rerun."""


class PipelineFailed(PipelineError):
    """More than ``max_failed_share`` of the inputs failed."""


class PipelineStalled(PipelineError):
    """No result arrived for ``stall_timeout_s`` seconds."""


@dataclass(frozen=True)
class Job:
    """What one pipeline adds to the common driver: its name, shard kind, actor class and
    the settings that define its output (a resumed run must match them)."""

    name: str
    kind: str
    stage: type
    stage_kwargs: dict[str, Any]
    identity: dict[str, Any]
    cameras: bool = False  # the stage needs each image's camera (``list_inputs(cameras=True)``)


@dataclass
class PipelineReport:
    """What a run did. ``rows_*`` and ``shards_written`` count this run only; the
    manifest holds the totals over all runs."""

    output: str
    total: int
    pending_at_start: int
    rows_written: int = 0
    rows_failed: int = 0
    shards_written: list[int] = field(default_factory=list)
    shards_skipped: int = 0
    seconds: float = 0.0
    first_result_seconds: float | None = None
    resources: dict[str, Any] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)  # what a job wrote besides shards (merged PLY files)

    @property
    def images_per_s(self) -> float:
        """Rows of this run per second of wall time, start-up (listing, actors) included."""
        return (self.rows_written + self.rows_failed) / self.seconds if self.seconds > 0 else 0.0


def error_summary(exc: BaseException, limit: int = 400) -> str:
    """One line for an error: Ray's wrappers (``RayTaskError`` and the like, whose text is
    a whole remote traceback) are replaced by the error they carry, and only the first
    line of its message is kept, cut at ``limit`` characters."""
    seen: set[int] = set()
    while type(exc).__module__.startswith("ray.") and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def _dropped(notices: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """Drop the log records ``(logger, message prefix)`` while the block runs, nothing else."""
    filters = [(logging.getLogger(name), _DropPrefix(prefix)) for name, prefix in notices]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)


@contextlib.contextmanager
def ray_session(config: RayConfig) -> Iterator[Any]:
    """Ray for the run: reuse an initialised session, else connect to ``config.address`` or
    start a private local cluster (shut down after).

    Without an address Ray is started with ``address="local"``: a bare ``ray.init()`` would
    join whatever cluster ``ray/ray_current_cluster`` in Ray's temp folder names, and a stale
    file there makes it retry a dead address for many minutes. A private cluster comes with a
    :mod:`.reaper` that kills its processes if the driver dies without shutting it down. Ray's notice that token
    authentication is on (its default for a local cluster) reads like a failure on every
    run; that one record is dropped (:data:`RAY_NOTICES`)."""
    import ray
    import ray.data  # noqa: F401 - ray.data is used through the yielded module

    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "address": config.address or "local"}
    if not config.address:
        kwargs.update({k: v for k, v in (("num_cpus", config.num_cpus), ("num_gpus", config.num_gpus),
                                          ("object_store_memory", config.object_store_memory)) if v is not None})
    if not config.address:  # a private cluster's agents must not outlive a killed driver
        reaper.start()
    try:
        with _dropped(RAY_NOTICES):
            ray.init(**kwargs)
    except BaseException:  # e.g. the stall watchdog's interrupt: leave no half-started cluster
        ray.shutdown()
        raise
    try:
        yield ray
    finally:
        ray.shutdown()


class Watchdog:
    """Interrupts the driver's main thread when no result arrived for ``timeout`` seconds
    (a hung model call, a lost node); inactive off the main thread or without a timeout.

    A driver started in the background (``nohup job &``) inherits an ignored SIGINT, which
    would make the interrupt a no-op; while active the watchdog installs Python's default
    SIGINT handler and restores the previous one on exit.
    """

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.fired = False
        self._last = time.monotonic()
        self._paused = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_handler: Any = None

    def __enter__(self) -> "Watchdog":
        if self.timeout is not None and threading.current_thread() is threading.main_thread():
            self._last = time.monotonic()
            handler = signal.getsignal(signal.SIGINT)
            if handler in (signal.SIG_IGN, signal.SIG_DFL, None):
                self._previous_handler = handler
                signal.signal(signal.SIGINT, signal.default_int_handler)
            self._thread = threading.Thread(target=self._run, name="sddr-watchdog", daemon=True)
            self._thread.start()
        elif self.timeout is not None:
            log.warning("stall_timeout_s is only enforced when the pipeline runs on the main thread")
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def beat(self) -> None:
        self._last = time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Driver work (committing a shard to the manifest) that must not count as a stall."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self.beat()

    def _run(self) -> None:
        assert self.timeout is not None
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            with self._lock:
                if self._stop.is_set():
                    return
                if not self._paused and time.monotonic() - self._last > self.timeout:
                    self.fired = True
                    _thread.interrupt_main()
                    return


class ProgressLog:
    """Rows done/total, failures, images/s and ETA, at most every ``interval`` seconds."""

    def __init__(self, name: str, total: int, interval: float, emit: Progress | None) -> None:
        self.name, self.total, self.interval, self.emit = name, total, interval, emit
        self.start = time.monotonic()
        self.last = -math.inf
        self.emitted: tuple[int, int, str] | None = None

    def update(self, done: int, failed: int, shards: str, force: bool = False) -> None:
        """Emit a line if ``interval`` passed (``force``: now, unless nothing changed)."""
        t = time.monotonic()
        if self.emit is None or (not force and t - self.last < self.interval):
            return
        self.last = t
        n = done + failed
        rate = n / max(t - self.start, 1e-9)
        eta = (self.total - n) / rate if rate > 0 else math.inf
        pct = 100.0 * n / self.total if self.total else 100.0
        state = (n, failed, shards)
        if force and state == self.emitted:
            return
        self.emitted = state
        self.emit(f"sddr pipeline {self.name}: {n}/{self.total} rows ({pct:.0f}%), {failed} failed, "
                  f"{rate:.2f} img/s, {shards} shards" + (f", ETA {eta:.0f} s" if math.isfinite(eta) and n < self.total else ""))


def open_manifest(layout: OutputLayout, job: Job, config: PipelineConfig, inputs: InputSet, plan: ShardPlan) -> dict[str, Any]:
    """A new manifest for an empty output, or the existing one checked for resuming."""
    manifest = layout.read_manifest()
    plan_info = plan.describe()
    if manifest is None:
        if not layout.is_empty():
            raise LayoutError(f"output {layout.uri} exists, is not empty and has no manifest.json; use a new output")
        manifest = {
            "format": FORMAT, "pipeline": job.name, "kind": job.kind, "package_version": __version__,
            "created": now(), "identity": job.identity, "input": inputs.describe(), "plan": plan_info,
            "versions": None, "completed": {}, "counts": {}, "runs": [],
        }
    else:
        if manifest.get("pipeline") != job.name or manifest.get("kind") != job.kind:
            raise LayoutError(f"cannot resume {layout.uri}: it is the output of a {manifest.get('pipeline')!r} job, not {job.name!r}")
        check_settings(manifest.get("identity", {}), job.identity, layout.uri, error=LayoutError)
        old = manifest.get("plan", {})
        if old.get("ids_sha256") != plan_info["ids_sha256"] or old.get("rows_per_shard") != plan.rows_per_shard:
            raise LayoutError(
                f"cannot resume {layout.uri}: the input or rows_per_shard changed since it was started "
                f"({old.get('ids')} ids, {old.get('rows_per_shard')} per shard then; {plan_info['ids']} ids, "
                f"{plan.rows_per_shard} per shard now), so shards would not line up; use a new output"
            )
        removed = layout.clean_temporaries()
        if removed:
            log.info("removed %d temporary files left by an interrupted run", removed)
        present = {p.rstrip("/") for p in published_shards(layout)}
        for key in list(manifest["completed"]):
            if layout.shard_path(int(key)) not in present:
                log.warning("shard %s is in the manifest but its file is missing; it will be redone", key)
                del manifest["completed"][key]
    manifest["config"] = config.public_dict()
    _update_counts(manifest, len(plan.ids))
    layout.write_manifest(manifest)
    return manifest


def _update_counts(manifest: dict[str, Any], total: int) -> None:
    done = sum(v["rows"] for v in manifest["completed"].values())
    failed = sum(v["errors"] for v in manifest["completed"].values())
    manifest["counts"] = {"inputs": total, "done": done, "failed": failed, "pending": total - done - failed,
                          "shards_completed": len(manifest["completed"])}
    manifest["updated"] = now()


class ShardCollector:
    """Commits the shards the workers wrote: each :data:`~sddr_pipeline.shards.writer.SUMMARY_SCHEMA`
    row becomes the shard's manifest entry (the manifest is written after each), once per
    shard; summaries of shards not pending (a retried call's repeat) are ignored."""

    def __init__(self, plan: ShardPlan, pending: list[int], layout: OutputLayout, job: Job, config: PipelineConfig,
                 manifest: dict[str, Any], report: PipelineReport) -> None:
        self.plan, self.layout, self.job, self.config = plan, layout, job, config
        self.manifest, self.report = manifest, report
        self.pending = set(pending)
        self.ignored = 0

    def add(self, summaries: pa.Table) -> None:
        for summary in summaries.to_pylist():
            if summary["shard"] not in self.pending:
                self.ignored += 1
                continue
            self.commit(summary)

    def _versions(self, summary: Mapping[str, Any]) -> None:
        predictor, refiner = summary["predictor"], summary["refiner"]
        known = self.manifest.get("versions")
        if (known and (known["predictor"], known["refiner"]) != (predictor, refiner)) or summary["bytes"] is None:
            then = f"{known['predictor']}, {known['refiner']}" if known else "other models"
            raise PipelineError(
                f"the models changed since earlier shards of {self.layout.uri} were written "
                f"({then} then; {predictor}, {refiner} now); use a new output"
            )
        self.manifest["versions"] = {"predictor": predictor, "refiner": refiner}

    def commit(self, summary: Mapping[str, Any]) -> None:
        """Record one written shard in the manifest, then check the failure share."""
        i = summary["shard"]
        self._versions(summary)
        entry = {
            "file": f"shards/{shard_name(i)}", "rows": summary["rows"], "errors": summary["errors"],
            "errors_file": f"errors/{shard_name(i)}" if summary["errors"] else None,
            "first_id": summary["first_id"], "last_id": summary["last_id"], "bytes": summary["bytes"],
            "write_seconds": summary["write_seconds"],
        }
        if self.job.kind == KIND_POINTS:  # rows count images; a point shard's file holds one row per point
            entry["points"] = summary["points"]
        self.manifest["completed"][str(i)] = entry
        self.pending.discard(i)
        _update_counts(self.manifest, len(self.plan.ids))
        self.layout.write_manifest(self.manifest)
        self.report.rows_written += summary["rows"]
        self.report.rows_failed += summary["errors"]
        self.report.shards_written.append(i)
        check_failures(self.manifest, self.config, self.layout)

    def missing(self) -> dict[int, int]:
        """Pending shards without a summary: {index: its number of ids}."""
        return {i: len(self.plan.shard_ids(i)) for i in sorted(self.pending)}


class ProgressBoard:
    """Rows done per shard as the workers report them (``report``, after each model call);
    a Ray actor during a run. A shard redone after a worker died keeps its higher count."""

    def __init__(self) -> None:
        self.shards: dict[int, tuple[int, int]] = {}

    def report(self, shard: int, ok: int, failed: int) -> None:
        if ok + failed >= sum(self.shards.get(shard, (0, 0))):
            self.shards[shard] = (ok, failed)

    def totals(self) -> tuple[int, int]:
        """(rows done, rows failed) over all shards of this run."""
        return sum(v[0] for v in self.shards.values()), sum(v[1] for v in self.shards.values())


class ProgressPoller:
    """A driver thread that reads a :class:`ProgressBoard` actor every ``interval`` seconds
    and calls ``on_change(ok, failed)`` when its totals moved."""

    def __init__(self, ray: Any, board: Any, on_change: Callable[[int, int], None], interval: float = PROGRESS_POLL_S) -> None:
        self.ray, self.board, self.on_change, self.interval = ray, board, on_change, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sddr-progress", daemon=True)

    def _run(self) -> None:
        last = (0, 0)
        while not self._stop.wait(self.interval):
            try:
                totals = tuple(self.ray.get(self.board.totals.remote(), timeout=5))
            except Exception as exc:  # progress only: a lost board must not end the job
                log.debug("could not read the workers' progress: %s", error_summary(exc))
                continue
            if totals != last:
                last = totals
                self.on_change(*totals)

    def __enter__(self) -> "ProgressPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def check_failures(manifest: Mapping[str, Any], config: PipelineConfig, layout: OutputLayout) -> None:
    counts = manifest["counts"]
    if counts["failed"] > config.max_failed_share * counts["inputs"]:
        raise PipelineFailed(
            f"{counts['failed']} of {counts['inputs']} inputs failed, more than max_failed_share="
            f"{config.max_failed_share:g}; the reasons are in {layout.display(layout.errors_dir)}"
        )


def shard_tasks(inputs: InputSet, plan: ShardPlan, pending: list[int]) -> list[pa.Table]:
    """One block per pending shard, of one row: ``shard`` and ``inputs``, a
    :func:`~.stage.pack_rows` cell of the shard's ``id``, ``source``, ``row`` (Parquet
    inputs: its row in that file) and camera columns (inputs that list them)."""
    position = {id_: k for k, id_ in enumerate(inputs.ids)}
    fields = [pa.field("id", pa.string()), pa.field("source", pa.string())]
    fields += [pa.field("row", pa.int64())] if inputs.rows else []
    schema = pa.schema(fields + (list(CAMERA_FIELDS) if inputs.cameras else []))
    blocks = []
    for i in pending:
        rows = [{"id": id_, "source": inputs.sources[position[id_]], "row": inputs.rows.get(id_),
                 **inputs.cameras.get(id_, {})} for id_ in plan.shard_ids(i)]
        table = pa.Table.from_pylist(rows, schema=schema)
        blocks.append(pa.table({"shard": pa.array([i], pa.int64()), "inputs": pack_rows([table])}))
    return blocks


def build_dataset(ray: Any, inputs: InputSet, plan: ShardPlan, pending: list[int], config: PipelineConfig,
                  resources: Resources, job: Job, layout: OutputLayout, versions: tuple[str, str] | None,
                  progress: Any = None) -> Any:
    """Read tasks feeding an actor pool of :class:`~.stage.ShardStage` around ``job.stage``,
    one row per pending shard; the dataset's rows are the shards' summaries. ``versions``:
    the models of the shards already recorded; ``progress``: a :class:`ProgressBoard` actor."""
    read_kwargs: dict[str, Any] = {"storage_options": dict(config.storage_options), "attempts": config.io_attempts,
                                   "max_wait_s": config.io_retry_timeout_s, "cameras": job.cameras}
    if inputs.kind == "parquet":
        read_kwargs["parquet"] = True
    elif inputs.kind == "dataset":
        read_kwargs.update(dataset_root=inputs.root, dataset_layout=inputs.layout)
    ds = ray.data.from_arrow(shard_tasks(inputs, plan, pending))
    ds = ds.map_batches(read_shard, fn_kwargs=read_kwargs, batch_format="pyarrow", batch_size=1,
                        num_cpus=resources.read_cpus)
    stage_kwargs = {**job.stage_kwargs, "device": config.device, "torch_threads": resources.torch_threads,
                    "include_image": config.include_image, "low_res": config.low_res, "high_res": config.high_res}
    gpu = {"num_gpus": resources.gpus_per_actor} if resources.gpus_per_actor > 0 else {}
    return ds.map_batches(
        ShardStage, fn_constructor_args=(job.stage, config.predictor, config.weights),
        fn_constructor_kwargs={"layout": layout, "config": config.public_dict(), "batch_size": config.batch_size,
                               "versions": versions, "progress": progress, "stage_kwargs": stage_kwargs},
        batch_size=1, batch_format="pyarrow", num_cpus=resources.cpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=resources.actors, max_tasks_in_flight_per_actor=SHARDS_IN_FLIGHT_PER_ACTOR),
        **gpu)


def preflight(config: PipelineConfig) -> None:
    """Errors the driver can see before starting Ray (an actor that cannot start ends the
    job with a much longer message): settings, predictor name, local weights path."""
    from sddr_pipeline.predictors import PredictorError, PredictorSpec
    from sddr_pipeline.registry import PREDICTORS

    config.validate()
    for key in ("input", "output"):
        if getattr(config, key).startswith("memory://"):
            raise ConfigError(f"{key}: memory:// filesystems live in one process; Ray workers would not see the data")
    try:
        name = PredictorSpec.parse(config.predictor).name
    except PredictorError as exc:
        raise ConfigError(f"predictor: {exc}") from None
    if name not in PREDICTORS:
        raise ConfigError(f"predictor: unknown predictor {name!r}; known: {', '.join(PREDICTORS.names())}")
    if config.weights != "default" and "://" not in config.weights and not Path(config.weights).expanduser().exists():
        raise ConfigError(f"weights: {config.weights} does not exist (a folder with config.json + model.safetensors, "
                          "or a .safetensors file)")


# one driver per local OUTPUT; object stores are not locked (fsspec has no portable create-if-absent)
@locked_output(lambda args: args["config"].output, PipelineError)
def run_job(config: PipelineConfig, job: Job, progress: Progress | None = stderr_progress) -> PipelineReport:
    """Run (or resume) one shard job; see the module doc. Raises :class:`PipelineError`
    subclasses when it cannot finish; completed shards stay valid for a rerun."""
    preflight(config)
    t_start = time.perf_counter()
    try:
        inputs = list_inputs(config.input, kind=config.input_kind, layout=config.layout,
                             storage_options=config.storage_options, attempts=config.io_attempts,
                             max_wait_s=config.io_retry_timeout_s, cameras=job.cameras)
        plan = ShardPlan(inputs.ids, config.rows_per_shard)
        layout = OutputLayout(config.output, config.storage_options, attempts=config.io_attempts,
                              max_wait_s=config.io_retry_timeout_s)
        manifest = open_manifest(layout, job, config, inputs, plan)
    except StorageError as exc:
        raise PipelineError(f"could not start: {error_summary(exc)}; nothing was done by this run; rerun the "
                            "same command when the storage is reachable (io_retry_timeout_s bounds the wait)") from exc
    pending = [i for i in range(plan.count) if str(i) not in manifest["completed"]]
    pending_rows = sum(len(plan.shard_ids(i)) for i in pending)
    report = PipelineReport(output=layout.uri, total=len(plan.ids), pending_at_start=pending_rows,
                            shards_skipped=plan.count - len(pending), manifest=manifest)
    if not pending:
        if progress:
            progress(f"sddr pipeline {job.name}: all {plan.count} shards of {layout.uri} are complete; nothing to do")
        check_failures(manifest, config, layout)
        report.seconds = time.perf_counter() - t_start
        return report
    run = {"started": now(), "status": "running", "pending_rows": pending_rows, "pending_shards": len(pending)}
    manifest["runs"].append(run)
    log_progress = ProgressLog(job.name, pending_rows, config.progress_interval_s, progress)
    dog = Watchdog(config.stall_timeout_s)
    ray_started = False
    try:
        with dog, ray_session(config.ray) as ray:  # start-up counts as a stall too
            ray_started = True
            dog.beat()
            resources = resolve_resources(config, ray.cluster_resources())
            report.resources = run["resources"] = resources.describe()
            if progress:
                progress(f"sddr pipeline {job.name}: {pending_rows} rows in {len(pending)} shards to do "
                         f"({report.shards_skipped} already complete) with {resources.actors} actors "
                         f"({resources.cpus_per_actor:g} CPU, {resources.gpus_per_actor:g} GPU each)")
            ctx = ray.data.DataContext.get_current()
            bars = ctx.enable_progress_bars
            ctx.enable_progress_bars = config.ray.progress_bars
            collector = ShardCollector(plan, pending, layout, job, config, manifest, report)

            def result_arrived() -> None:
                dog.beat()
                if report.first_result_seconds is None:
                    report.first_result_seconds = time.perf_counter() - t_start

            def workers_progressed(ok: int, failed: int) -> None:
                result_arrived()
                log_progress.update(ok, failed, f"{len(manifest['completed'])}/{plan.count}")

            known = manifest.get("versions")
            try:
                board = ray.remote(num_cpus=0)(ProgressBoard).remote()
                ds = build_dataset(ray, inputs, plan, pending, config, resources, job, layout,
                                   (known["predictor"], known["refiner"]) if known else None, board)
                batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
                try:
                    with ProgressPoller(ray, board, workers_progressed):
                        for batch in batches:  # summaries only: the workers wrote the shards
                            result_arrived()
                            with dog.paused():
                                collector.add(batch)
                finally:
                    getattr(batches, "close", lambda: None)()
            finally:
                ctx.enable_progress_bars = bars
        missing = collector.missing()
        if missing:
            raise PipelineError(f"the dataset ended with {len(missing)} shards incomplete ({sum(missing.values())} ids "
                                f"without a result, e.g. shard {next(iter(missing))}); rerun to complete them")
        run["status"] = "completed"
    except KeyboardInterrupt:
        if not dog.fired:
            run["status"] = "interrupted"
            raise
        run["status"] = "stalled"
        if not ray_started:
            where = f"the cluster at {config.ray.address}" if config.ray.address else "a local cluster"
            raise PipelineStalled(f"Ray could not start or reach {where} within {config.stall_timeout_s:g} s "
                                  "(stall_timeout_s); stopped before any work") from None
        raise PipelineStalled(f"no result for {config.stall_timeout_s:g} s (stall_timeout_s); stopped. "
                              f"{len(report.shards_written)} shards were completed and a rerun resumes") from None
    except (PipelineError, ConfigError) as exc:
        run["status"] = f"failed: {exc}"
        raise
    except Exception as exc:
        summary = error_summary(exc)
        run["status"] = f"failed: {summary}"
        raise PipelineError(f"failed: {summary}; {len(manifest['completed'])} of {plan.count} shards of {layout.uri} are "
                            f"complete ({len(report.shards_written)} written by this run); rerun the same command to "
                            "resume from there") from exc
    finally:
        report.seconds = time.perf_counter() - t_start
        run.update(finished=now(), seconds=round(report.seconds, 3),
                   first_result_seconds=None if report.first_result_seconds is None else round(report.first_result_seconds, 3),
                   rows_written=report.rows_written,
                   rows_failed=report.rows_failed, shards_written=len(report.shards_written),
                   images_per_s=round(report.images_per_s, 4))
        _update_counts(manifest, len(plan.ids))
        try:
            layout.write_manifest(manifest)
        except StorageError as exc:  # the shards are recorded already; keep the error that ended the run
            log.warning("could not record this run in %s: %s", layout.display(layout.manifest_path), error_summary(exc))
        log_progress.update(report.rows_written, report.rows_failed, f"{len(manifest['completed'])}/{plan.count}", force=True)
    check_failures(manifest, config, layout)
    return report
