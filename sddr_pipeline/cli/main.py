"""``sddr`` command line. Each sub-command parses arguments and calls the Python API."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..devices import DeviceError, resolve_device


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be positive")
    return v


def _clamp_fraction(text: str) -> float:
    from ..inference.options import check_range_clamp

    try:
        return check_range_clamp(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc) if "range_clamp" in str(exc) else f"{text!r} is not a number")


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH, e.g. 384x512")
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError("each side must be at least 16 px")
    return h, w


def cmd_refine(args: argparse.Namespace) -> int:
    from ..batch import RefineJobError, refine_folder
    from ..inference.options import RefineOptions, two_stage_config
    from ..models import Refiner, RefinerWeightsError
    from ..predictors import PredictorError, get_predictor

    device = resolve_device(args.device)
    try:
        options = RefineOptions(mode=args.mode, low_res=args.low_res, high_res=args.high_res,
                                two_stage=two_stage_config(args.steps, args.window_median), range_clamp=args.range_clamp,
                                confidence=args.confidence)
        refiner = Refiner.from_pretrained(args.weights, device=device)
        predictor = get_predictor(args.predictor, device=device)
    except (RefinerWeightsError, PredictorError, FileNotFoundError, ValueError) as exc:
        print(f"sddr refine: {exc}", file=sys.stderr)
        return 2
    try:
        report = refine_folder(
            args.input,
            args.output,
            predictor,
            refiner,
            options,
            predictor_spec=args.predictor,
            layout=args.layout,
            on_error=args.on_error,
            skip_existing=args.skip_existing,
            save_predictions=args.save_predictions,
            scale_points=args.scale_points,
            progress=not args.quiet,
        )
    except RefineJobError as exc:
        print(f"sddr refine: {exc}", file=sys.stderr)
        return 1
    print(
        f"sddr refine: {len(report.done)} refined, {len(report.skipped)} skipped (already done), "
        f"{len(report.failed)} failed in {report.seconds:.1f} s -> {report.output}"
    )
    if report.failed:
        print("failed images:", file=sys.stderr)
        for name, reason in report.failed.items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..training import ConfigError, load_config, parse_override, recipe_path, train

    try:
        path = Path(args.config)
        if not path.exists() and "/" not in args.config and not args.config.endswith((".yaml", ".yml")):
            path = recipe_path(args.config)
        overrides = dict(parse_override(text) for text in args.set)
        flags = {"output": str(args.output) if args.output else None, "steps": args.steps, "device": args.device}
        overrides.update({k: v for k, v in flags.items() if v is not None})
        config = load_config(path, overrides)
    except ConfigError as exc:
        print(f"sddr train: {exc}", file=sys.stderr)
        return 2
    from ..io.lock import OutputLockError
    from ..training.shard_source import ShardSourceError
    from ..training.trainer import ResumeError

    try:
        final = train(config, resume=not args.no_resume, progress=None if args.quiet else print)
    except (ShardSourceError, ResumeError) as exc:  # unusable shards or checkpoints: the message names the file
        print(f"sddr train: {exc}", file=sys.stderr)
        return 2
    except OutputLockError as exc:  # another run holds OUTPUT: the message names it
        print(f"sddr train: {exc}", file=sys.stderr)
        return 1
    print(f"sddr train: weights written to {final} (use --weights {final})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..training import ConfigError, parse_override
    from ..training.trainer import export_checkpoint

    try:
        settings = dict(parse_override(text) for text in args.set)
        refiner = export_checkpoint(args.checkpoint, args.output, average=not args.raw_weights,
                                    overwrite=args.overwrite, **settings)
    except (ConfigError, FileExistsError, ValueError, TypeError) as exc:
        print(f"sddr export: {exc}", file=sys.stderr)
        return 2
    print(f"sddr export: {refiner.version} written to {args.output} (use --weights {args.output})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..data import DatasetError
    from ..evaluation import evaluate_dataset, format_table
    from ..models import Refiner, RefinerWeightsError
    from ..predictors import PredictorError

    try:
        refiner = Refiner.from_pretrained(args.weights, device=resolve_device(args.device))
        results = evaluate_dataset(
            args.dataset,
            args.predictor,
            refiner,
            layout=args.layout,
            limit=args.limit,
            two_stage=not args.no_two_stage,
            progress=not args.quiet,
            low_res=args.low_res,
            high_res=args.high_res,
            alignment=args.alignment,
            seed=args.seed,
            report_dir=args.report,
            range_clamp=args.range_clamp,
        )
    except (RefinerWeightsError, PredictorError, DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"sddr eval: {exc}", file=sys.stderr)
        return 2
    cfg = results["config"]
    print(
        f"sddr eval: {cfg['images']} image(s) of {cfg['dataset']} ({cfg['layout']}), predictor {cfg['predictor_name']} "
        f"at {cfg['resolutions']['low']}/{cfg['resolutions']['high']} px, refiner {cfg['refiner']}, "
        f"alignment {cfg['alignment']['fit']} in {cfg['alignment']['space']}, range clamp {cfg['range_clamp']:g}, "
        f"{cfg['seconds']:.1f} s"
    )
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    if args.report is not None:
        print(f"wrote {Path(args.report) / 'index.html'}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ..data import write_synthetic_dataset

    h, w = args.size
    try:
        root = write_synthetic_dataset(args.output, count=args.count, height=h, width=w, seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        print(f"sddr synth: {exc}", file=sys.stderr)
        return 2
    print(f"sddr synth: wrote {args.count} synthetic RGB-D scenes ({h}x{w}, seed {args.seed}) to {root}")
    return 0


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from ..bench.speed import SpeedBenchConfig, format_report, run_speed_bench

    cfg = SpeedBenchConfig(reps=args.reps, threads=args.threads, device=resolve_device(args.device), sizes=tuple(args.sizes),
                           presets=tuple(args.presets), predictor_sizes=tuple(args.predictor_sizes),
                           two_stage_size=args.two_stage_size)
    report = run_speed_bench(cfg, progress=print)
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_predictors(args: argparse.Namespace) -> int:
    from ..registry import PREDICTORS

    for name in PREDICTORS.names():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sddr", description="Self-Distilled Depth Refinement for any depth predictor.")
    p.add_argument("--version", action="version", version=f"sddr-pipeline {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("refine", help="refine every image of a folder or dataset into OUTPUT")
    r.add_argument("input", type=Path, help="folder of images, or a dataset folder (generic, Middlebury, KITTI, NYU, ...)")
    r.add_argument("output", type=Path, help="output folder (refused if it exists, unless --skip-existing)")
    r.add_argument("--predictor", required=True, help="predictor spec: hf:ID|FOLDER, torchscript:PATH, onnx:PATH, python:MOD:FN, simulated[:k=v,...]")
    r.add_argument("--weights", default="default", help="refiner weights: 'default' (bundled) or a folder/.safetensors file (default: %(default)s)")
    r.add_argument("--mode", choices=("one-stage", "two-stage"), default="one-stage", help="default: %(default)s")
    r.add_argument("--steps", type=_positive_int, default=2, help="two-stage coarse-to-fine steps (default: %(default)s)")
    r.add_argument("--window-median", type=_positive_int, default=None, metavar="K",
                   help="two-stage, gated weights: a window's new HIGH becomes the estimate plus the KxK median of their "
                        "difference, which drops its RGB texture (odd, 1 = off; default: TwoStageConfig's, 7)")
    r.add_argument("--range-clamp", type=_clamp_fraction, default=None, metavar="F",
                   help="clamp the refined map to LOW's local range within F x the long side; 0 = raw network output "
                        "(default: the weights' own `range_clamp`: 0 for the bundled ones; docs/QUALITY_HISTORY.md)")
    r.add_argument("--low-res", type=_positive_int, default=None, help="long side of the LOW prediction (default: predictor's, else 384)")
    r.add_argument("--high-res", type=_positive_int, default=None, help="long side of the HIGH prediction (default: predictor's, else 1024)")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    r.add_argument("--layout", default="auto", help="input layout: auto, images, generic, middlebury2014, middlebury2005_2006, kitti, nyu, rgbd_sequence")
    r.add_argument("--on-error", choices=("skip", "fail"), default="fail", help="what a bad image does (default: %(default)s)")
    r.add_argument("--skip-existing", action="store_true", help="resume: reuse OUTPUT and skip images already done")
    r.add_argument("--save-predictions", action="store_true", help="also write raw low/high predictions as low/<name>.npy, high/<name>.npy")
    r.add_argument("--scale-points", type=_positive_int, default=None, metavar="N",
                   help="make maps metric from N random valid pixels of each image's own metric depth "
                        "(RGB-D / LiDAR frames with holes), e.g. for sddr pointcloud/fuse")
    r.add_argument("--confidence", action="store_true",
                   help="also write confidence/<name>.npy: per-pixel confidence in [0, 1], usable as a depth-loss weight")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_refine)

    t = sub.add_parser("train", help="train a refiner from a YAML recipe (resumes from the last checkpoint)")
    t.add_argument("--config", required=True, help="YAML training config, or the name of a bundled recipe (e.g. quick)")
    t.add_argument("--output", type=Path, default=None, help="output folder (overrides the config's `output`)")
    t.add_argument("--steps", type=_positive_int, default=None, help="override the number of steps")
    t.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="override the config's device")
    t.add_argument("--no-resume", action="store_true", help="start over instead of continuing from the last checkpoint")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, VALUE read as YAML (repeatable), e.g. --set loss.trim=0 "
                        "--set noise.cons=[0.0,0.35]")
    t.add_argument("--quiet", action="store_true", help="no per-step log lines")
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("export", help="write a training checkpoint's network as a weights folder (fp16)")
    x.add_argument("checkpoint", type=Path, help="a run's checkpoints/step-XXXXXX.json")
    x.add_argument("output", type=Path, help="weights folder to write (config.json + model.safetensors)")
    x.add_argument("--raw-weights", action="store_true", help="the raw weights, not the run's weight average (`ema`)")
    x.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a runtime setting of the written config that keeps every parameter, VALUE read as YAML "
                        "(repeatable), e.g. --set max_side=768 --set range_clamp=0")
    x.add_argument("--overwrite", action="store_true", help="replace weights already in OUTPUT")
    x.set_defaults(func=cmd_export)

    e = sub.add_parser("eval", help="score low, high, two baselines and SDDR one-/two-stage on a dataset with ground truth")
    e.add_argument("dataset", type=Path, help="dataset folder with ground truth (Middlebury 2014, KITTI, NYU, generic, ...)")
    e.add_argument("--predictor", required=True, help="predictor spec, e.g. simulated:low=384,high=1024")
    e.add_argument("--weights", default="default", help="refiner weights: 'default' or a folder/.safetensors file (default: %(default)s)")
    e.add_argument("--json", type=Path, default=None, help="write the full results (means, per image, config) here")
    e.add_argument("--report", type=Path, default=None, help="write an HTML report with one picture per image into this folder")
    e.add_argument("--layout", default="auto", help="dataset layout (default: auto-detect)")
    e.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N images")
    e.add_argument("--no-two-stage", action="store_true", help="skip SDDR two-stage (the slowest method)")
    e.add_argument("--low-res", type=_positive_int, default=None, help="long side of the LOW prediction (default: predictor's, else 384)")
    e.add_argument("--high-res", type=_positive_int, default=None, help="long side of the HIGH prediction (default: predictor's, else 1024)")
    e.add_argument("--alignment", default="auto", choices=("auto", "disparity", "depth", "scale", "metric"), help="alignment before value metrics (default: %(default)s)")
    e.add_argument("--seed", type=int, default=0, help="seed of ORD's random superpixel pairs (default: %(default)s)")
    e.add_argument("--range-clamp", type=_clamp_fraction, default=None, metavar="F",
                   help="local-range clamp of the SDDR maps (fraction of the long side; 0 = raw network output; "
                        "default: the weights' own `range_clamp`)")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    e.add_argument("--quiet", action="store_true", help="no per-image progress lines")
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("synth", help="write procedural synthetic RGB-D scenes (exact depth) in the generic layout")
    s.add_argument("output", type=Path)
    s.add_argument("--count", type=_positive_int, default=4)
    s.add_argument("--size", type=_size, default=(384, 512), help="HEIGHTxWIDTH (default: 384x512)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_synth)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    sp = bsub.add_parser("speed", help="predictor vs refiner timings, side by side, medians of interleaved repetitions")
    sp.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    sp.add_argument("--reps", type=_positive_int, default=5, help="interleaved repetitions (default: %(default)s, at least 5 for reported numbers)")
    sp.add_argument("--threads", type=_positive_int, default=None, help="torch threads for everything (default: torch's current)")
    sp.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    sp.add_argument("--sizes", type=_positive_int, nargs="+", default=[512, 1024, 2048], help="one-stage square sizes (default: 512 1024 2048)")
    sp.add_argument("--presets", nargs="+", default=["sddr-small", "sddr-paper"],
                    help="refiner presets, each optionally with config changes that keep its parameters: "
                         "sddr-small+head_scale=2,fusion_median=3 (default: %(default)s)")
    sp.add_argument("--predictor-sizes", type=_positive_int, nargs="+", default=[518, 1036],
                    help="Depth Anything V2 Small input sizes (default: %(default)s)")
    sp.add_argument("--two-stage-size", type=int, default=1024, help="two-stage square size; 0 skips two-stage (default: %(default)s)")
    sp.set_defaults(func=cmd_bench_speed)

    from ..integrations import add_arguments as add_integration_arguments
    from ..pipelines.cli import add_bench_pipeline_arguments, add_pipeline_arguments, add_pseudolabel_arguments

    add_bench_pipeline_arguments(bsub)
    add_pipeline_arguments(sub)
    add_pseudolabel_arguments(sub)
    add_integration_arguments(sub)

    pr = sub.add_parser("predictors", help="list registered predictor names (built-ins and entry points)")
    pr.set_defaults(func=cmd_predictors)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DeviceError as exc:
        raise SystemExit(f"sddr: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
