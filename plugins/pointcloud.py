"""Point-cloud and TSDF integrations: ``sddr pointcloud`` and ``sddr fuse``.

The numerics live in :mod:`sddr_pipeline.geometry`; this module adds the command-line
front ends. Both read an ``sddr refine`` output folder whose maps are METRIC.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from sddr_pipeline.geometry.intrinsics import intrinsics_from_sample
from sddr_pipeline.geometry.pointcloud import pointcloud_from_output, write_mesh_ply
from sddr_pipeline.geometry.tsdf import evaluate_rgbd_fusion, fuse_from_output, render_fusion_figure
from sddr_pipeline.io.atomic import atomic_write_json


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{v} must be positive")
    return v


def add_pointcloud_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``sddr pointcloud INPUT --output OUT [--intrinsics K.json] ...``."""
    p.add_argument("input", type=Path, help="`sddr refine` output folder (metric maps)")
    p.add_argument("--intrinsics", type=Path, default=None,
                   help='JSON {"fx","fy","cx","cy"} or {"K"}, optional "width"/"height" (default: from the input dataset)')
    p.add_argument("--output", type=Path, required=True, help="cloud.ply (one image, or --name) or a folder for <name>.ply")
    p.add_argument("--name", default=None, help="only this image of the folder")
    p.add_argument("--voxel", type=_positive_float, default=None, help="voxel downsampling size in metres")
    p.add_argument("--stride", type=int, default=1, help="keep every N-th row and column (default: 1)")
    p.add_argument("--depth-max", type=_positive_float, default=None, help="drop points farther than this (m)")
    p.add_argument("--normals", action="store_true", help="estimate normals")
    p.set_defaults(func=cli_pointcloud)


def add_fuse_arguments(f: argparse.ArgumentParser) -> None:
    """Arguments of ``sddr fuse INPUT --output MESH [--poses P] [--intrinsics K.json] ...``."""
    f.add_argument("input", type=Path, help="`sddr refine` output folder (metric maps)")
    f.add_argument("--output", type=Path, required=True, help="mesh.ply (or a point cloud with --pointcloud)")
    f.add_argument("--poses", type=Path, default=None,
                   help="camera-to-world poses: Redwood .log (i-th frame = i-th name) or JSON {name: 4x4} (default: from the input dataset)")
    f.add_argument("--intrinsics", type=Path, default=None, help="intrinsics JSON (default: from the input dataset)")
    f.add_argument("--voxel", type=_positive_float, default=0.01, help="voxel size in metres (default: %(default)s)")
    f.add_argument("--trunc", type=_positive_float, default=None, help="truncation distance in metres (default: 4 voxels)")
    f.add_argument("--depth-max", type=_positive_float, default=4.0, help="ignore depth beyond this (default: %(default)s m)")
    f.add_argument("--pointcloud", action="store_true", help="write the TSDF surface points instead of a mesh")
    f.set_defaults(func=cli_fuse)


def cli_pointcloud(args: argparse.Namespace) -> int:
    """Entry point of ``sddr pointcloud``."""
    try:
        report = pointcloud_from_output(args.input, args.intrinsics, args.output, args.voxel, name=args.name,
                                        stride=args.stride, depth_max=args.depth_max, normals=args.normals)
    except (ValueError, KeyError, FileNotFoundError, ImportError) as exc:
        print(f"sddr pointcloud: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


def cli_fuse(args: argparse.Namespace) -> int:
    """Entry point of ``sddr fuse``."""
    try:
        report = fuse_from_output(args.input, args.output, intrinsics_file=args.intrinsics, poses_file=args.poses,
                                  voxel=args.voxel, trunc=args.trunc, depth_max=args.depth_max, pointcloud=args.pointcloud)
    except (ValueError, KeyError, FileNotFoundError, ImportError) as exc:
        print(f"sddr fuse: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


VARIANT_LABELS = {"refined": "SDDR refined", "high": "HIGH prediction alone", "low": "LOW prediction alone"}


def _span(values: Sequence[float]) -> str:
    """``lo-hi`` of the values to 3 decimals, or one value where both print the same."""
    lo, hi = f"{min(values):.3f}", f"{max(values):.3f}"
    return lo if lo == hi else f"{lo}-{hi}"


def fusion_markdown(report: dict, resolutions: tuple[int | None, int | None], wall: float) -> str:
    """The demo's table (docs/INTEGRATIONS.md) from its ``metrics.json`` report: surface
    distances in centimetres and the per-frame depth errors of each fused variant, under a
    line saying when, with which weights and settings, and in how much wall time (``wall``:
    the whole command's seconds)."""
    s = report["settings"]
    low, high = resolutions
    sizes = {"refined": "", "high": f" ({high} px)" if high else "", "low": f" ({low} px)" if low else ""}
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `{s['refiner']}` (predictor `{s['predictor']}`, LOW {low} / HIGH "
        f"{high} px), {s['frames']} frames, voxel {s['voxel'] * 100:g} cm, truncation {s['trunc'] * 100:g} cm, depth up "
        f"to {s['depth_max']:g} m, {s['n_reference']} ground-truth depths per frame; {wall:.0f} s wall on {os.cpu_count()} "
        f"CPU cores ({report['seconds']:.0f} s refinement, fusion and distances). Distances in centimetres:",
        "",
        "| depth fused | accuracy median / mean | completeness median / mean | Chamfer | F-score @"
        f"{2 * s['voxel'] * 100:g} cm | median AbsRel per frame |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in VARIANT_LABELS.items():
        m, errors = report["surface_distance_m"][key], report["median_abs_rel_depth_error"][key]
        lines.append(
            f"| {label}{sizes[key]} | {m['accuracy_median'] * 100:.2f} / {m['accuracy_mean'] * 100:.2f} | "
            f"{m['completeness_median'] * 100:.2f} / {m['completeness_mean'] * 100:.2f} | {m['chamfer'] * 100:.2f} | "
            f"{m['fscore']:.2f} | {_span(errors)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sddr_pipeline.plugins.pointcloud ROOT OUT``: the RGB-D fusion demo
    (exact vs SDDR-refined depth, surface distances, optional rendered figure)."""
    p = argparse.ArgumentParser(description="Fuse an RGB-D sequence from exact and from SDDR-refined depth; report distances.")
    p.add_argument("root", type=Path, help="rgbd_sequence folder (color/, depth/, trajectory.log)")
    p.add_argument("output", type=Path, help="folder for reference.ply, refined.ply, high.ply, metrics.json")
    p.add_argument("--predictor", default="simulated", help="predictor spec (default: %(default)s)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--weights", help="refiner weights folder or .safetensors")
    group.add_argument("--preset", help="UNTRAINED refiner preset (e.g. sddr-small), for plumbing checks only")
    p.add_argument("--voxel", type=float, default=0.01)
    p.add_argument("--depth-max", type=float, default=4.0)
    p.add_argument("--points", type=int, default=200, help="sparse metric depths per frame (default: %(default)s)")
    p.add_argument("--low-res", type=int, default=None)
    p.add_argument("--high-res", type=int, default=None)
    p.add_argument("--figure", type=Path, default=None, help="write the rendered comparison PNG here")
    p.add_argument("--markdown", type=Path, default=None, help="write the table of docs/INTEGRATIONS.md here")
    args = p.parse_args(argv)
    started = time.perf_counter()
    from sddr_pipeline.models import Refiner
    from sddr_pipeline.predictors import get_predictor

    refiner = Refiner.from_pretrained(args.weights) if args.weights else Refiner.from_config(args.preset)
    predictor = get_predictor(args.predictor)
    t0 = time.perf_counter()
    ev = evaluate_rgbd_fusion(args.root, predictor, refiner, voxel=args.voxel, depth_max=args.depth_max,
                              n_reference=args.points, low_res=args.low_res, high_res=args.high_res)
    args.output.mkdir(parents=True, exist_ok=True)
    write_mesh_ply(args.output / "reference.ply", ev.reference)
    for key, mesh in ev.meshes.items():
        write_mesh_ply(args.output / f"{key}.ply", mesh)
    report = {"settings": ev.settings, "surface_distance_m": ev.metrics, "median_abs_rel_depth_error": ev.depth_errors,
              "seconds": round(time.perf_counter() - t0, 1)}
    if args.figure:
        from sddr_pipeline.data import open_dataset

        ds = open_dataset(args.root, layout="rgbd_sequence")
        mid = ds[len(ds) // 2]
        report["figure"] = {"path": str(args.figure),
                            "method": render_fusion_figure(ev, mid.meta["pose"], intrinsics_from_sample(mid), args.figure)}
    atomic_write_json(args.output / "metrics.json", report)
    if args.markdown:
        resolutions = predictor.default_resolutions or (None, None)
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(fusion_markdown(
            report, (args.low_res or resolutions[0], args.high_res or resolutions[1]), time.perf_counter() - started))
    print(json.dumps(report, indent=2))
    return 0


__all__ = ["add_fuse_arguments", "add_pointcloud_arguments", "cli_fuse", "cli_pointcloud", "fuse_from_output", "fusion_markdown", "main",
           "pointcloud_from_output"]

if __name__ == "__main__":
    sys.exit(main())

