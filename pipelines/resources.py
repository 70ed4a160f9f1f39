"""How many actors, with which CPUs/GPUs: chosen so the job can never starve its reads.

Ray schedules by declared resources. An actor pool that claims every CPU leaves none for
the read tasks feeding it and the job hangs without an error (seen with 2 actors of 1 CPU
on a 2-CPU cluster); a GPU pool on a cluster without GPUs waits forever. Both are refused
here, before anything starts, with a message saying what to change.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .config import ConfigError, PipelineConfig

EPS = 1e-9


@dataclass(frozen=True)
class Resources:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    read_cpus: float
    torch_threads: int

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def resolve_resources(config: PipelineConfig, cluster: Mapping[str, float]) -> Resources:
    """Fill the ``None`` resource settings of ``config`` from the cluster's totals
    (``ray.cluster_resources()``) and check that actors plus one read task fit."""
    cpus = float(cluster.get("CPU", 0.0))
    gpus = float(cluster.get("GPU", 0.0))
    read = float(config.read_cpus)
    if cpus < read + EPS:
        raise ConfigError(f"the Ray cluster has {cpus:g} CPUs; at least read_cpus={read:g} plus some for the actors are needed")
    gpa = config.gpus_per_actor if config.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    if gpa > 0:
        if gpus < gpa - EPS:
            raise ConfigError(
                f"gpus_per_actor={gpa:g} but the Ray cluster has {gpus:g} GPUs: the actors could never be "
                "placed and the job would wait forever; use gpus_per_actor 0 for CPU actors"
            )
        actors = config.actors or max(1, int(math.floor(gpus / gpa + EPS)))
        if actors * gpa > gpus + EPS:
            raise ConfigError(f"{actors} actors x gpus_per_actor={gpa:g} need {actors * gpa:g} GPUs; the cluster has {gpus:g}")
    else:
        actors = config.actors or max(1, int(math.floor(cpus - read + EPS)))
    cpa = config.cpus_per_actor if config.cpus_per_actor is not None else min(1.0, (cpus - read) / actors)
    if actors * cpa + read > cpus + EPS:
        raise ConfigError(
            f"{actors} actors x cpus_per_actor={cpa:g} + read_cpus={read:g} = {actors * cpa + read:g} CPUs, "
            f"more than the cluster's {cpus:g}: the actors would hold every CPU, the read tasks feeding them "
            "could never run and the job would hang; lower actors or cpus_per_actor (fractions are fine)"
        )
    threads = config.torch_threads or max(1, int(math.floor(cpa + EPS)))
    return Resources(actors=actors, cpus_per_actor=round(cpa, 6), gpus_per_actor=gpa, read_cpus=read, torch_threads=threads)
