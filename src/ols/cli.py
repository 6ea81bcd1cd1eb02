"""The command line: ``ols train`` and ``ols demo``; ``main(argv)`` so tests can call it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

from . import __version__
from .config import add_config_arguments, config_from_args, given_flags, read_yaml, saved_config
from .data import DATASETS
from .evaluate import EvalOptions
from .losses import LOSSES
from .models import MODELS
from .presets import resolve, shipped_names
from .rundir import read_json
from .utils.dataclass_cli import add_dataclass_arguments, given_arguments
from .utils.help_text import HelpFormatter, examples


def _train(args: argparse.Namespace) -> int:
    from .trainer import Interrupted, fit, resume

    try:
        if args.resume:
            if args.print_config:
                raise ValueError("--print-config shows a new run's settings; a run's own are in "
                                 "RUN_DIR/config.json")
            if args.config:
                raise ValueError("-c/--config and --resume do not mix: a resumed run keeps its config.json")
            if args.auto_resume:
                raise ValueError("--auto-resume is for a command line that starts a run; drop it")
            if args.overwrite:
                raise ValueError(f"--resume continues {args.resume} and --overwrite would start it afresh; "
                                 "give one of them")
            summary = resume(args.resume, given_flags(args))
            path = Path(args.resume) / "config.json"
            cfg = saved_config({**read_json(path), "out": args.resume}, path)
        else:
            config = resolve(args.config, "config") if args.config else None
            cfg = config_from_args(args, read_yaml(config) if config else None,
                                   f"{config}: " if config else "")
            if args.print_config:
                print(config_text(cfg.to_dict()), end="")
                return 0
            if args.auto_resume and args.overwrite:
                raise ValueError("--auto-resume continues a run that --overwrite starts afresh; give one")
            summary = fit(cfg, overwrite=args.overwrite, auto_resume=args.auto_resume)
    except Interrupted:
        return 130
    if not summary:  # a torchrun rank other than 0
        return 0
    noise = (f", realised noise {100 * summary['realised_noise_rate']:.1f}%" if cfg.noise_rate > 0 else "")
    print(f"{cfg.loss} on {cfg.dataset}: test top-1 error {summary['test_top1_err']:.2f}%, "
          f"ECE {summary['test_ece']:.2f}%{noise} ({summary['seconds']:.1f}s) -> {cfg.out}")
    return 0


def config_text(values: dict) -> str:
    """``values`` as YAML (JSON, which YAML reads too, without PyYAML)."""
    try:
        import yaml
    except ImportError:
        import json

        return json.dumps(values, indent=2) + "\n"
    return yaml.safe_dump(values, sort_keys=False)


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalOptions, evaluate_run

    evaluate_run(args.run_dir, EvalOptions(**given_arguments(args, EvalOptions)))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .experiments.report import make_report
    from .experiments.runner import SweepFailed, SweepInterrupted, run_sweep
    from .experiments.spec import load_spec

    spec = load_spec(args.spec, args.set or (), args.seeds)
    if args.out:
        spec.out = Path(args.out)
    from .experiments.executors import parse_executor

    try:
        executor = parse_executor(args.executor, spec.executor, args.executor_arg or [])
        if executor.kind != "local" and args.jobs != 1:
            raise ValueError(f"--jobs is for local runs; with --executor {executor.kind} the scheduler "
                             "places the runs (submitit: --executor-arg max_parallel=N; ray: the "
                             "cluster's size)")
        run_sweep(spec, jobs=args.jobs, dry_run=args.dry_run, overwrite_changed=args.overwrite_changed,
                  executor=executor)
    except SweepFailed as err:
        print(f"ols sweep: {err}", file=sys.stderr)
        return 1
    except SweepInterrupted as err:
        print(f"ols sweep: {err}", file=sys.stderr)
        return 130
    if not args.dry_run:
        print(f"report: {make_report(str(spec.out))}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .experiments.report import make_report, make_runs_report
    from .experiments.runner import SWEEP_FILE

    if len(args.dirs) == 1 and (Path(args.dirs[0]) / SWEEP_FILE).is_file():
        if args.out:
            raise ValueError("--out is for a report of runs side by side; a sweep's report goes in its "
                             "folder")
        path = make_report(args.dirs[0])
    else:
        path = make_runs_report(args.dirs, args.out or "runs/report")
    print(path.read_text())
    print(f"written: {path} and {path.with_suffix('.html').name}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, seeds=args.seeds, epochs=args.epochs, noise_rate=args.noise_rate,
             dataset=args.dataset)
    return 0


def _list_presets(args: argparse.Namespace) -> int:
    from .experiments.catalog import preset_summary

    for kind, flag in (("config", "ols train -c NAME"), ("spec", "ols sweep NAME")):
        print(f"{kind}s ({flag}):")
        names = shipped_names(kind)
        width = max(map(len, names), default=0)
        for name in names:
            print(f"  {name:{width}s}  {preset_summary(kind, name)}")
    from .losses.registry import LOSSES, loss_summary

    print("losses (ols train --loss NAME; each class's docstring gives the formula and its source):")
    for name in LOSSES:
        print(f"  {name:20s} {loss_summary(name)}")
    return 0


def _data_args_text() -> str:
    """Each dataset's ``--data-arg`` options with their defaults, for ``ols train --help``."""
    from .data.registry import READERS, dataset_options

    lines = ["--data-arg options, by dataset (KEY=VALUE, repeatable):"]
    for name in READERS:
        options = ", ".join(f"{k}={v}" for k, v in dataset_options(name).items()) or "none"
        lines.append(f"  {name:16s}{options}")
    return "\n".join(lines)


TRAIN_EXAMPLES = examples(
    "ols train --dataset fashion-mnist --loss ols --noise-rate 0.4 --epochs 40 --out runs/fm-ols",
    "ols train -c cifar100/paper --model resnet56 --loss ols --data-dir ~/data --seed 1",
    "ols train --resume runs/fm-ols --epochs 60          # continue, or extend, a run",
    "torchrun --nproc_per_node=4 -m ols train -c imagenet/paper --loss ols --data-dir ~/imagenet")
EVAL_EXAMPLES = examples(
    "ols eval runs/fm-ols                                 # error, NLL, ECE, T, reliability.png",
    "ols eval runs/fm-ols --soft-labels --classes 0 6 --tsne",
    "ols eval runs/x --attack fgsm pgd --eps 8/255",
    "ols eval runs/x --checkpoint runs/x/snapshots/epoch_0040.pt --data-dir /new/place/of/the/data")
SWEEP_EXAMPLES = examples(
    "ols sweep table7-noise-digits --jobs 2               # a shipped spec by name (ols list-presets)",
    "ols sweep my-spec.yaml --dry-run                     # what would run",
    "ols sweep table7-noise-fashion-mnist --set base.epochs=5 --seeds 0 --out runs/sweeps/quick",
    "ols report runs/sweeps/table7-noise-digits")
REPORT_EXAMPLES = examples(
    "ols report runs/sweeps/table7-noise-digits           # a sweep: tables and plots",
    "ols report runs/fm-ce runs/fm-ols                    # ad-hoc runs side by side",
    "ols report runs/fm-*                                  # every run the shell's pattern finds")


def build_parser() -> argparse.ArgumentParser:
    """The ``ols`` argument parser with its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="ols", description="Online Label Smoothing: train, evaluate and compare."
    )
    parser.add_argument("--version", action="version", version=f"ols {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train one model and write a run directory",
        description="Train one model and write its run directory (config.json, metrics.jsonl, checkpoint.pt, "
                    "summary.json). Under torchrun --nproc_per_node=N it trains with DDP.",
        epilog=TRAIN_EXAMPLES + "\n\n" + _data_args_text(), formatter_class=HelpFormatter,
    )
    train.add_argument("-c", "--config", metavar="YAML",
                       help="YAML file of config keys (the flag names with underscores), or a shipped config "
                            "by name (cifar100/paper; see list-presets); flags override it")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its checkpoint; --epochs N extends it")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in an --out that already holds a run (its checkpoint is replaced)")
    train.add_argument("--auto-resume", action="store_true",
                       help="if --out already holds a run of these settings, resume it from its checkpoint "
                            "instead of refusing (for jobs that a scheduler requeues; a worker that torchrun "
                            "restarts does this by itself)")
    train.add_argument("--print-config", action="store_true",
                       help="print the settings this command would train with (YAML, for -c), and stop")
    add_config_arguments(train, {"dataset": sorted(DATASETS), "model": sorted(MODELS) + ["timm:<name>"],
                                 "loss": sorted(LOSSES)})
    train.set_defaults(func=_train)

    ev = sub.add_parser(
        "eval", help="evaluate a trained run: accuracy, ECE, attacks, human KL, ensembles, figures",
        description="Evaluate the run in RUN_DIR (its last checkpoint) and write RUN_DIR/eval.json.",
        epilog=EVAL_EXAMPLES, formatter_class=HelpFormatter,
    )
    ev.add_argument("run_dir", metavar="RUN_DIR")
    add_dataclass_arguments(ev, EvalOptions)
    ev.set_defaults(func=_eval)

    sw = sub.add_parser("sweep", help="run the grid of a spec (experiments/*.yaml); resumable",
                        description="Run every unfinished run of SPEC, then write the report.",
                        epilog=SWEEP_EXAMPLES, formatter_class=HelpFormatter)
    sw.add_argument("spec", metavar="SPEC.yaml",
                    help="a spec file, or a shipped spec by name (table7-noise-digits)")
    sw.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores/jobs threads)")
    sw.add_argument("--out", help="sweep directory (default: the spec's out, or runs/sweeps/<name>)")
    sw.add_argument("--dry-run", action="store_true", help="list the runs still to do, and stop")
    sw.add_argument("--set", action="append", metavar="PATH=VALUE",
                    help="change the spec (repeatable): base.epochs=2, methods.OLS.alpha=0.3, "
                         "grid.noise_rate=[0.0,0.4]; with --out to keep a full sweep's folder apart")
    sw.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                    help="the seeds to run (replaces the grid's seed list)")
    sw.add_argument("--overwrite-changed", action="store_true",
                    help="rerun from scratch the runs whose folder holds a run made with other settings")
    sw.add_argument("--executor", choices=("local", "submitit", "ray"),
                    help="where the runs execute: local processes (the default), SLURM jobs through submitit "
                         "(pip install 'ols[slurm]'; its local executor without SLURM), or Ray tasks "
                         "(pip install 'ols[ray]'); or the spec's executor: block")
    sw.add_argument("--executor-arg", action="append", metavar="KEY=VALUE",
                    help="an executor option (repeatable): gpus, cpus, partition, account, time_min, mem_gb, "
                         "max_parallel, requeues (submitit); gpus, cpus, retries, address (ray)")
    sw.set_defaults(func=_sweep)

    presets = sub.add_parser("list-presets",
                             help="the configs, sweep specs and losses that ship with ols, by name")
    presets.set_defaults(func=_list_presets)

    rep = sub.add_parser("report", help="tables (mean ± std over seeds) and plots of a sweep, or runs side "
                                        "by side",
                         description="Write report.md and report.html (figures embedded): of a sweep, in its "
                                     "folder; of finished runs side by side, in --out.",
                         epilog=REPORT_EXAMPLES, formatter_class=HelpFormatter)
    rep.add_argument("dirs", nargs="+", metavar="DIR", help="a sweep folder, or one or more run folders")
    rep.add_argument("--out", help="where a report of runs goes (default: runs/report)")
    rep.set_defaults(func=_report)

    demo = sub.add_parser(
        "demo", help="CE, LS (eps 0.1 and 0.5) and OLS, error and calibration before and after temperature "
        "scaling, 3 seeds, on a Fashion-MNIST subset (digits without it); under 5 minutes on a 2-core CPU"
    )
    demo.add_argument("--out", default="runs/demo", help="directory for the runs and the figure")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run")
    demo.add_argument("--epochs", type=int, default=8, help="epochs per run")
    demo.add_argument("--dataset", choices=["fashion-mnist", "digits"], default=None,
                      help="default: the Fashion-MNIST subset when it is installed, else the digits")
    demo.add_argument("--noise-rate", type=float, default=0.0, help="symmetric label noise (the held-out "
                      "labels that T is fitted on carry it too)")
    demo.set_defaults(func=_demo)

    from .detection.cli import add_detect_parser

    add_detect_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status. Bad input exits 2 with a message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # our errors are written for users: no traceback
        print(f"ols {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ols list-presets | head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as err:  # a full disk, a read-only or missing folder, a file where a folder is
        where = f"{err.filename}: " if err.filename else ""
        print(f"ols {args.command}: error: {where}{err.strerror or err} (a checkpoint written before "
              "is intact)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ols {args.command}: interrupted", file=sys.stderr)
        return 130
