"""Command-line wiring for the Ray pipelines; ``sddr_pipeline.cli.main`` calls these.

* :func:`add_pipeline_arguments` adds ``sddr pipeline refine ...``, ``sddr pipeline
  pointcloud ...`` and ``sddr pipeline merge ...``
* :func:`add_pseudolabel_arguments` adds ``sddr pseudolabel ...``
* :func:`add_bench_pipeline_arguments` adds ``sddr bench pipeline ...`` (to ``bench``'s sub-parsers)

Every option left out keeps the value of ``--config FILE`` (YAML), else the default of
the config dataclass. Nothing here imports Ray until a command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def _storage_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML config (pipelines/configs/*.yaml); options below override it")
    p.add_argument("--input", default=None, help="images folder/prefix, dataset folder, list file or Parquet image shards (any fsspec URI)")
    p.add_argument("--output", default=None, help="output root URI: shards/, errors/, manifest.json (an existing one is resumed)")
    p.add_argument("--predictor", default=None, help="predictor spec, e.g. hf:FOLDER, python:MOD:FN, simulated")
    p.add_argument("--weights", default=None, help="refiner weights folder or .safetensors file")
    p.add_argument("--input-kind", default=None, choices=("auto", "images", "dataset", "list", "parquet", "colmap", "transforms"))
    p.add_argument("--layout", default=None, help="dataset layout for dataset inputs (default: auto)")
    p.add_argument("--low-res", type=_positive_int, default=None)
    p.add_argument("--high-res", type=_positive_int, default=None)
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="inside the actors (auto: CUDA if visible, else CPU)")
    p.add_argument("--actors", type=_positive_int, default=None, help="actor pool size (default: one per GPU, else one per free CPU)")
    p.add_argument("--gpus-per-actor", type=_non_negative_float, default=None, help="fractions share a GPU; 0 for CPU actors")
    p.add_argument("--cpus-per-actor", type=_non_negative_float, default=None, help="fractional CPUs per actor")
    p.add_argument("--torch-threads", type=_positive_int, default=None, help="torch threads per actor")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="images per model call (an actor works on a whole shard)")
    p.add_argument("--rows-per-shard", type=_positive_int, default=None)
    p.add_argument("--include-image", action=argparse.BooleanOptionalAction, default=None, help="store the input image bytes in the shards")
    p.add_argument("--max-failed-share", type=_non_negative_float, default=None, help="fail when more than this share of inputs fails")
    p.add_argument("--stall-timeout", type=_non_negative_float, default=None, help="seconds without any result before the job stops")
    p.add_argument("--io-retry-timeout", type=_non_negative_float, default=None, metavar="SECONDS",
                   help="longest time one storage operation is retried through transient errors (default: 120)")
    p.add_argument("--storage-option", type=_storage_option, action="append", default=None, metavar="KEY=VALUE",
                   help='fsspec option (value parsed as JSON when it can be), e.g. client_kwargs=\'{"endpoint_url": "http://..."}\'')
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--num-cpus", type=_non_negative_float, default=None, help="CPUs of the local Ray cluster")
    p.add_argument("--num-gpus", type=_non_negative_float, default=None, help="GPUs of the local Ray cluster")
    p.add_argument("--object-store-memory", type=_positive_int, default=None, help="bytes of the local Ray object store")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _overrides(args: argparse.Namespace, extra: tuple[str, ...]) -> dict[str, Any]:
    keys = ("input", "output", "predictor", "weights", "input_kind", "layout", "low_res", "high_res", "device", "actors",
            "gpus_per_actor", "cpus_per_actor", "torch_threads", "batch_size", "rows_per_shard", "include_image",
            "max_failed_share") + extra
    out = {k: getattr(args, k) for k in keys}
    out["stall_timeout_s"] = args.stall_timeout
    out["io_retry_timeout_s"] = args.io_retry_timeout
    if args.storage_option:
        out["storage_options"] = dict(args.storage_option)
    out["ray"] = {"address": args.ray_address, "num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
                  "object_store_memory": args.object_store_memory}
    return out


POINTCLOUD_SETTINGS: tuple[str, ...] = (
    "mode", "steps", "range_clamp", "window_median", "scale_points", "min_sfm_points", "max_scale_error", "min_confidence", "voxel",
    "depth_max", "stride", "merge_ply", "merge_voxel", "merge_by", "tile_size")


def _positionals(args: argparse.Namespace, prog: str) -> str | None:
    """Move ``INPUT OUTPUT`` positionals into ``--input``/``--output``; a message when both are given."""
    for key in ("input", "output"):
        given = getattr(args, f"{key}_path", None)
        if given is not None:
            if getattr(args, key) is not None:
                return f"{prog}: give {key.upper()} once, as a positional or as --{key}"
            setattr(args, key, given)
    return None


def _run(args: argparse.Namespace, name: str) -> int:
    from .config import ConfigError, PointCloudPipelineConfig, PseudoLabelPipelineConfig, RefinePipelineConfig, load_config
    from .runner import PipelineError, stderr_progress
    from sddr_pipeline.shards.layout import LayoutError
    from .inputs import InputError

    if name == "refine":
        from .refine import run_refine as run

        cls: type = RefinePipelineConfig
        extra: tuple[str, ...] = ("mode", "steps", "save_predictions", "confidence", "range_clamp", "window_median")
    elif name == "pointcloud":
        from .pointcloud import run_pointcloud as run

        cls, extra = PointCloudPipelineConfig, POINTCLOUD_SETTINGS
    else:
        from .pseudolabel import run_pseudolabel as run

        cls = PseudoLabelPipelineConfig
        extra = ("steps", "seed", "top", "regions")
    prog = "sddr pseudolabel" if name == "pseudolabel" else f"sddr pipeline {name}"
    problem = _positionals(args, prog)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        overrides = _overrides(args, extra)
        if name == "pointcloud" and overrides.get("voxel") == 0:  # --voxel 0: no voxel filter
            overrides["voxel"] = None
            config = load_config(cls, args.config, overrides)
            config.voxel = None
        else:
            config = load_config(cls, args.config, overrides)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        report = run(config, progress=None if args.quiet else stderr_progress)
    except (InputError, LayoutError, ConfigError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    counts = report.manifest.get("counts", {})
    print(f"{prog}: {report.rows_written} rows written, {report.rows_failed} failed, {report.shards_skipped} shards "
          f"already complete, in {report.seconds:.1f} s ({report.images_per_s:.2f} img/s) -> {report.output} "
          f"[total: {counts.get('done')} done, {counts.get('failed')} failed of {counts.get('inputs')}]")
    if "merge" in report.outputs:
        merged = report.outputs["merge"]
        print(f"{prog}: merged {merged['points_in']} points into {len(merged['files'])} PLY file(s) -> {merged['output']}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from sddr_pipeline.shards.layout import LayoutError
    from sddr_pipeline.shards.io import StorageError

    from .pointcloud import merge_point_shards

    prog = "sddr pipeline merge"
    if args.by == "tile" and args.tile_size is None:
        print(f"{prog}: --by tile needs --tile-size", file=sys.stderr)
        return 2
    try:
        report = merge_point_shards(args.input, args.dest, voxel=args.voxel, by=args.by, tile_size=args.tile_size,
                                    storage_options=dict(args.storage_option or []),
                                    progress=None if args.quiet else (lambda m: print(m, file=sys.stderr)))
    except (LayoutError, ValueError, ImportError, StorageError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(f"{prog}: {report.points_in} points -> {len(report.files)} PLY file(s) in {report.output} "
          f"({sum(report.files.values())} points, voxel {report.voxel}) in {report.seconds:.1f} s")
    return 0


def add_pipeline_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """``sddr pipeline refine --input URI --output URI --predictor SPEC [...]``."""
    p = subparsers.add_parser("pipeline", help="Ray pipelines writing Parquet shards (refine, pointcloud, merge)")
    sub = p.add_subparsers(dest="pipeline", required=True)
    r = sub.add_parser("refine", help="refine every input image into Parquet shards, resumably, with Ray")
    _add_common(r)
    r.add_argument("--mode", default=None, choices=("one-stage", "two-stage"))
    r.add_argument("--steps", type=_positive_int, default=None, help="two-stage coarse-to-fine steps")
    r.add_argument("--save-predictions", action=argparse.BooleanOptionalAction, default=None, help="keep raw low/high predictions")
    r.add_argument("--confidence", action=argparse.BooleanOptionalAction, default=None,
                   help="fill the shards' confidence column: per-pixel confidence in [0, 1] (.npy float32 HxW)")
    r.add_argument("--range-clamp", type=float, default=None, metavar="F",
                   help="local-range clamp of the refined maps, fraction of the long side; 0 = raw network output "
                        "(default: the weights' own `range_clamp`: 0 for the bundled ones)")
    r.add_argument("--window-median", type=_positive_int, default=None, metavar="K",
                   help="two-stage: the windows' texture median, odd, 1 = off (default: 7; see `sddr refine`)")
    r.set_defaults(func=lambda args: _run(args, "refine"))
    _add_pointcloud(sub)
    _add_merge(sub)
    return p


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _add_pointcloud(sub: Any) -> None:
    """``sddr pipeline pointcloud INPUT OUTPUT --predictor SPEC [...]``."""
    c = sub.add_parser("pointcloud", help="metric coloured point clouds of every input image as Parquet point shards, with Ray",
                       description="Refine, make metric (--scale-points, SfM points, or a metric predictor), unproject with "
                                   "the confidence and voxel filters, and write point shards (image_id, x, y, z, r, g, b, "
                                   "confidence; world frame when poses are given). Images that cannot be made metric are "
                                   "error rows. Resumable.")
    c.add_argument("input_path", nargs="?", metavar="INPUT",
                   help="COLMAP workspace (sparse/0 + images/), transforms.json, Parquet with camera columns, or an RGB-D "
                        "sequence folder (any fsspec URI; COLMAP and datasets: local)")
    c.add_argument("output_path", nargs="?", metavar="OUTPUT", help="output root URI (shards/, errors/, manifest.json)")
    _add_common(c)
    c.add_argument("--mode", default=None, choices=("one-stage", "two-stage"))
    c.add_argument("--steps", type=_positive_int, default=None, help="two-stage coarse-to-fine steps")
    c.add_argument("--range-clamp", type=float, default=None, metavar="F", help="local-range clamp (see refine)")
    c.add_argument("--window-median", type=_positive_int, default=None, metavar="K",
                   help="two-stage: the windows' texture median (see refine)")
    c.add_argument("--scale-points", type=_positive_int, default=None, metavar="N",
                   help="make each map metric from N random pixels of the image's own depth map (RGB-D, LiDAR), as `sddr refine`")
    c.add_argument("--min-sfm-points", type=_positive_int, default=None, metavar="N",
                   help="SfM points an image needs to be scaled by them (default: 10)")
    c.add_argument("--max-scale-error", type=_positive_float, default=None, metavar="E",
                   help="fail an image whose median relative error at its scale points exceeds E (default: 0.2)")
    c.add_argument("--min-confidence", type=_non_negative_float, default=None, metavar="C",
                   help="drop pixels of lower confidence (default: 0.3; 0 keeps all)")
    c.add_argument("--voxel", type=_non_negative_float, default=None, metavar="V",
                   help="voxel filter size in world units (metres when metric; default: 0.01; 0: off)")
    c.add_argument("--depth-max", type=_positive_float, default=None, metavar="M", help="drop points farther than this")
    c.add_argument("--stride", type=_positive_int, default=None, help="keep every N-th row and column (default: 1)")
    c.add_argument("--merge-ply", default=None, metavar="DEST", help="after the job, write merged PLY files here (see merge)")
    c.add_argument("--merge-voxel", type=_positive_float, default=None, metavar="V", help="voxel of the merged PLY (default: --voxel)")
    c.add_argument("--merge-by", default=None, choices=("all", "folder", "tile"), help="one PLY for all, per id folder, or per tile")
    c.add_argument("--tile-size", type=_positive_float, default=None, metavar="T", help="tile edge for --merge-by tile")
    c.set_defaults(func=lambda args: _run(args, "pointcloud"))


def _add_merge(sub: Any) -> None:
    """``sddr pipeline merge OUTPUT DEST [--voxel V] [--by all|folder|tile] [--tile-size T]``."""
    m = sub.add_parser("merge", help="merge the point shards of a pointcloud output into downsampled PLY files (Open3D)")
    m.add_argument("input", metavar="OUTPUT", help="output root of `sddr pipeline pointcloud`")
    m.add_argument("dest", metavar="DEST", help="folder URI for <name>.ply files and merge.json")
    m.add_argument("--voxel", type=_positive_float, default=None, help="voxel size (default: the job's voxel)")
    m.add_argument("--by", default="all", choices=("all", "folder", "tile"),
                   help="scene.ply for the whole output (all), one per image-id folder, or one per tile (default: all)")
    m.add_argument("--tile-size", type=_positive_float, default=None, help="tile edge in world units (--by tile)")
    m.add_argument("--storage-option", type=_storage_option, action="append", default=None, metavar="KEY=VALUE",
                   help="fsspec option for both URIs (value parsed as JSON when it can be)")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=_merge)


def add_pseudolabel_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """``sddr pseudolabel --input URI --output URI --predictor SPEC [...]``."""
    p = subparsers.add_parser("pseudolabel", help="self-distillation training shards (G_S, regions, low/high, refined) with Ray")
    _add_common(p)
    p.add_argument("--steps", type=_positive_int, default=None, help="coarse-to-fine steps S of G_S")
    p.add_argument("--seed", type=int, default=None, help="k-means seed of the regions")
    p.add_argument("--top", type=float, default=None, help="share of G_S kept as high-frequency pixels")
    p.add_argument("--regions", type=_positive_int, default=None, help="number of high-frequency regions")
    p.set_defaults(func=lambda args: _run(args, "pseudolabel"))
    return p


def add_bench_pipeline_arguments(bench_subparsers: Any) -> argparse.ArgumentParser:
    """``sddr bench pipeline --images N --json OUT.json``."""
    p = bench_subparsers.add_parser("pipeline", help="Ray pipeline (1 and 2 CPU actors) vs a plain loop, images/s and peak memory")
    p.add_argument("--images", type=_positive_int, default=48, help="synthetic images (default: %(default)s)")
    p.add_argument("--size", type=_positive_int, nargs=2, default=[192, 256], metavar=("H", "W"), help="image size (default: 192 256)")
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.set_defaults(func=_bench)
    return p


def _bench(args: argparse.Namespace) -> int:
    from .bench import PipelineBenchConfig, format_report, run_pipeline_bench

    cfg = PipelineBenchConfig(images=args.images, height=args.size[0], width=args.size[1], batch_size=args.batch_size)
    report = run_pipeline_bench(cfg, progress=print)
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
