"""``ols detect train`` and ``ols detect eval``: the detection command line."""

from __future__ import annotations

import argparse
from typing import Any

from ..utils.dataclass_cli import add_dataclass_arguments, given_arguments
from ..utils.help_text import HelpFormatter, examples
from .config import DetectConfig

GROUPS = {
    "dataset": "data",
    "loss": "class loss",
    "width": "model and optimisation",
    "score_threshold": "evaluation",
    "seed": "run",
}


def add_detect_parser(sub: Any) -> None:
    """The ``detect`` sub-command, with its own ``train`` and ``eval``."""
    detect = sub.add_parser(
        "detect",
        help="detection (Table X): a YOLOv3-style MobileNetV2 with hard labels, LS "
        "or OLS on its class head; VOC mAP",
        description="Train and evaluate a detector on canvas (synthetic) or VOC data.",
    )
    inner = detect.add_subparsers(dest="detect_command", required=True)
    train = inner.add_parser(
        "train",
        help="train a detector and write its run directory",
        description="Train a detector; writes config.json, metrics.jsonl, checkpoint.pt, "
        "summary.json (test mAP), and OLS's soft_labels.npy/png.",
        epilog=examples(
            "ols detect train --dataset canvas --loss ols --epochs 15 --out runs/det-ols",
            "ols detect train --dataset voc --data-dir ~/data --loss ols --epochs 120 --width 1.0",
            "ols detect train --resume runs/det-ols --epochs 20",
            "ols detect eval runs/det-ols",
        ),
        formatter_class=HelpFormatter,
    )
    train.add_argument("-c", "--config", metavar="YAML", help="YAML file of the keys below (underscores)")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR; --epochs N extends it"
    )
    train.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    add_dataclass_arguments(train, DetectConfig, GROUPS)
    train.set_defaults(func=_train)
    ev = inner.add_parser(
        "eval",
        help="test mAP and per-class AP of a run into RUN_DIR/eval.json",
        description="Evaluate RUN_DIR's last checkpoint: VOC mAP@0.5 (area AP and VOC07 "
        "11-point) and per-class AP into eval.json, and detections.png.",
    )
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--no-figure", action="store_true", help="skip detections.png")
    ev.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from ..config import read_yaml
    from .config import detect_config_from_dict
    from .run import DetectInterrupted, fit, resume

    given = given_arguments(args, DetectConfig)
    try:
        if args.resume:
            if args.overwrite:
                raise ValueError(f"--resume continues {args.resume} and --overwrite would start it afresh; "
                                 "give one of them")
            extra = sorted(set(given) - {"epochs", "save_every_steps"})
            if extra or args.config:
                what = ", ".join(f"--{k.replace('_', '-')}" for k in extra) or "-c/--config"
                raise ValueError(
                    f"{what} cannot change on --resume (it would be a different run); only --epochs and "
                    "--save-every-steps can"
                )
            summary = resume(args.resume, given.get("epochs"), given.get("save_every_steps"))
            out = args.resume
        else:
            base = read_yaml(args.config) if args.config else {}
            detect_config_from_dict(base, f"{args.config}: ")  # the file's own keys, named as the file's
            cfg = detect_config_from_dict({**base, **given})
            summary = fit(cfg, overwrite=args.overwrite)
            out = cfg.out
    except DetectInterrupted:
        return 130
    if not summary:  # a torchrun rank other than 0
        return 0
    print(
        f"{summary['dataset']}, class loss {summary['loss']}: test mAP@0.5 {100 * summary['test_map']:.2f} "
        f"(VOC07 11-point {100 * summary['test_map_07']:.2f}) ({summary['seconds']:.1f}s) -> {out}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .run import evaluate_run

    evaluate_run(args.run_dir, figure=not args.no_figure)
    return 0
