"""Sweep specs: a YAML file naming a grid of training runs, how to evaluate them, and how to report.

::

    name: table7-digits
    title: Noisy labels on digits (paper Table VII)
    out: runs/sweeps/table7-digits          # default: runs/sweeps/<name>
    base: {dataset: digits, epochs: 40}      # TrainConfig keys shared by every run
    methods:                                 # rows of the table; each a set of overrides
      CE: {loss: ce}
      LS: {loss: ls}
      OLS: {loss: ols, alpha: 0.5}
    grid:                                    # every combination of these values is run
      noise_rate: [0.0, 0.2, 0.4]
      seed: [0, 1, 2]
    eval: {attack: fgsm, eps: 8/255}         # optional `ols eval` options for every run
    launcher: torchrun --nproc_per_node=4    # optional: how `ols train` is started (default: this Python)
    report:
      columns: noise_rate                    # the varied setting (default: the first non-seed grid key)
      metrics: [test_top1_err, test_ece]     # one table each (keys of summary.json or eval.json)
      plots: [curves, sweep]                 # error curves with seed bands; metric vs the column
      baseline: CE                           # the method the others are compared with, paired by
                                             # seed (default: the first method)

Grid and method keys are :class:`~ols.config.TrainConfig` fields; ``loss_args.NAME`` and
``data_args.NAME`` set one entry of those mappings (e.g. ``loss_args.update_every``).
Without ``methods`` there is one row, named after ``base.loss``.
"""

from __future__ import annotations

import copy
import itertools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..config import FIELDS, config_from_dict, read_yaml
from ..evaluate import SPEC_EVAL_KEYS, EvalOptions
from ..presets import resolve
from ..utils.dataclass_cli import check_field_value, field_kind
from .directions import higher_is_better
from .jobs import launcher_command

SPEC_KEYS = ("name", "title", "description", "command", "out", "base", "methods", "grid", "eval", "report",
             "launcher", "executor")
#: what each run is: ``ols train`` (classification, the default) or ``ols detect train``
COMMANDS = ("train", "detect")
REPORT_KEYS = ("columns", "metrics", "plots", "baseline")
PLOTS = ("curves", "sweep")


@dataclass
class RunSpec:
    """One training run of a sweep: its method (row), settings, and directory."""

    method: str
    settings: Dict[str, Any]
    config: Dict[str, Any]
    run_dir: Path


@dataclass
class SweepSpec:
    """A parsed, checked sweep spec."""

    name: str
    title: str
    out: Path
    base: Dict[str, Any]
    methods: Dict[str, Dict[str, Any]]
    grid: Dict[str, List[Any]]
    eval: Dict[str, Any] = field(default_factory=dict)
    columns: Optional[str] = None
    metrics: List[str] = field(default_factory=lambda: ["test_top1_err"])
    plots: List[str] = field(default_factory=list)
    description: str = ""
    launcher: str = ""
    baseline: Optional[str] = None
    command: str = "train"
    #: the command line's changes to the spec (``--set``, ``--seeds``), recorded with the sweep
    overrides: List[str] = field(default_factory=list)
    #: the spec's ``executor:`` block (kind and options; :mod:`~ols.experiments.executors`)
    executor: Dict[str, Any] = field(default_factory=dict)

    def runs(self) -> List[RunSpec]:
        """Every (method, grid point) as a :class:`RunSpec`, in a stable order."""
        keys = list(self.grid)
        out = []
        for method, overrides in self.methods.items():
            for values in itertools.product(*(self.grid[k] for k in keys)):
                settings = dict(zip(keys, values))
                slug = "__".join(f"{k}={setting_text(v)}" for k, v in settings.items()) or "run"
                run_dir = self.out / _safe(method) / _safe(slug)
                config = apply_overrides(apply_overrides(dict(self.base), overrides), settings)
                config["out"] = str(run_dir)
                out.append(RunSpec(method, settings, config, run_dir))
        return out


def setting_text(value: Any) -> str:
    """How a grid value reads in folder names and report columns; ``None`` reads ``epoch``.

    (``None`` is OLS's default update period, once an epoch.)
    """
    return "epoch" if value is None else str(value)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "=._-" else "_" for c in text)


def apply_overrides(config: Dict[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """``config`` with ``overrides`` applied; ``loss_args.X`` / ``data_args.X`` set one entry."""
    config = dict(config)
    for key, value in overrides.items():
        if "." in key:
            head, sub = key.split(".", 1)
            config[head] = {**config.get(head, {}), sub: value}
        else:
            config[key] = value
    return config


def _check_key(key: str, where: str, command: str = "train") -> None:
    if command == "detect":
        from ..detection.config import FIELDS as DETECT_FIELDS

        if key not in DETECT_FIELDS:
            raise ValueError(f"{where}: {key!r} is not a detection setting (a DetectConfig field: "
                             f"{', '.join(DETECT_FIELDS)})")
        return
    head = key.split(".", 1)[0]
    if head not in FIELDS or ("." in key and head not in ("loss_args", "data_args")):
        raise ValueError(f"{where}: {key!r} is not a training setting (a TrainConfig field, "
                         "loss_args.NAME or data_args.NAME)")


def _eval_option(key: str, value: Any, source: str) -> Any:
    """A spec's ``eval:`` entry, checked against :class:`~ols.evaluate.EvalOptions`.

    A scalar may stand for a one-item list, and a number for a text such as ``eps``.
    """
    if key not in SPEC_EVAL_KEYS:
        raise ValueError(f"{source}: unknown eval option {key!r}; known: {', '.join(SPEC_EVAL_KEYS)}")
    base, _ = field_kind(EvalOptions, key)
    if typing.get_origin(base) is list and not isinstance(value, (list, tuple)):
        value = [value]
    elif base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return check_field_value(EvalOptions, key, value, f"{source}: eval ")


def parse_spec(data: Mapping[str, Any], source: str = "spec") -> SweepSpec:
    """A :class:`SweepSpec` from the spec's mapping; every key and run config is checked."""
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        raise ValueError(f"{source}: unknown key {unknown[0]!r}; a spec has {', '.join(SPEC_KEYS)}")
    name = str(data.get("name") or Path(source).stem)
    for key in ("base", "methods", "grid"):
        if key in data and data[key] is not None and not isinstance(data[key], Mapping):
            raise ValueError(f"{source}: {key}: must map names to values, got a {type(data[key]).__name__} "
                             f"({data[key]!r}); e.g. {key}: {{...}}")
    if "methods" in data and not data["methods"]:
        raise ValueError(f"{source}: methods: is empty; list at least one method (name: {{overrides}}), or "
                         "drop the key to run base alone")
    if not any(data.get(k) for k in ("base", "methods", "grid")):
        raise ValueError(f"{source}: the spec sets no base, methods or grid, so it would sweep one default "
                         "run (ols on digits, 40 epochs); say what to run, e.g. base: {dataset: digits}")
    command = str(data.get("command") or "train")
    if command not in COMMANDS:
        raise ValueError(f"{source}: command {command!r}: use train (ols train) or detect (ols detect train)")
    if command == "detect" and data.get("eval"):
        raise ValueError(f"{source}: eval: is ols eval's options; a detection run is evaluated by its own "
                         "training (summary.json holds the test mAP); drop eval")
    base = dict(data.get("base") or {})
    methods = dict(data.get("methods") or {str(base.get("loss", "ols")): {}})
    grid = {k: (list(v) if isinstance(v, (list, tuple)) else [v])
            for k, v in (data.get("grid") or {}).items()}
    for key in base:
        _check_key(key, f"{source} base", command)
    for method, overrides in methods.items():
        if not isinstance(overrides, Mapping):
            raise ValueError(f"{source}: method {method!r} must map settings to values")
        for key in overrides:
            _check_key(key, f"{source} method {method!r}", command)
    for key, values in grid.items():
        _check_key(key, f"{source} grid", command)
        if not values:
            raise ValueError(f"{source}: grid key {key!r} has no values, so the sweep would be empty")
        texts = [setting_text(v) for v in values]
        if len(set(texts)) < len(texts):
            twice = sorted({t for t in texts if texts.count(t) > 1})
            raise ValueError(f"{source}: grid key {key!r} lists {', '.join(twice)} more than once; each "
                             "value is one run (one folder), so give it once")
    evaluation = {key: _eval_option(key, value, source) for key, value in (data.get("eval") or {}).items()}
    try:
        EvalOptions(**evaluation).validate()
    except ValueError as err:
        raise ValueError(f"{source}: eval: {err}") from None
    report = dict(data.get("report") or {})
    for key in report:
        if key not in REPORT_KEYS:
            raise ValueError(f"{source}: unknown report option {key!r}; known: {', '.join(REPORT_KEYS)}")
    columns = report.get("columns") or next((k for k in grid if k != "seed"), None)
    if columns is not None and columns not in grid:
        raise ValueError(f"{source}: report.columns {columns!r} is not a grid key "
                         f"({', '.join(grid) or 'none'})")
    plots = list(report.get("plots") or [])
    for p in plots:
        if p not in PLOTS:
            raise ValueError(f"{source}: unknown plot {p!r}; known: {', '.join(PLOTS)}")
    metrics = report.get("metrics") or ["test_top1_err"]
    for metric in [metrics] if isinstance(metrics, str) else metrics:
        try:
            higher_is_better(metric)
        except ValueError as err:
            raise ValueError(f"{source}: report.metrics: {err}") from None
    baseline = report.get("baseline")
    if baseline is not None and baseline not in methods:
        raise ValueError(f"{source}: report.baseline {baseline!r} is not a method; the spec has "
                         f"{', '.join(methods)}")
    spec = SweepSpec(name, str(data.get("title") or name), Path(data.get("out") or f"runs/sweeps/{name}"),
                     base, methods, grid, evaluation, columns,
                     [metrics] if isinstance(metrics, str) else list(metrics), plots,
                     str(data.get("description") or ""), str(data.get("launcher") or ""), baseline, command)
    folders: Dict[str, str] = {}
    for method in methods:
        other = folders.setdefault(_safe(method), method)
        if other != method:
            raise ValueError(f"{source}: methods {other!r} and {method!r} would share the run folder "
                             f"{_safe(method)!r}; rename one")
    if spec.launcher:
        launcher_command(spec.launcher, source)
    block = data.get("executor") or {}
    if not isinstance(block, Mapping):
        raise ValueError(f"{source}: executor: must map options to values, e.g. executor: {{kind: submitit, "
                         "gpus: 1}}")
    from .executors import parse_executor

    parse_executor(None, block, [], source)  # checked here, used by ols sweep
    spec.executor = dict(block)
    runs = spec.runs()
    if not runs:
        raise ValueError(f"{source}: the sweep has no runs (no methods or an empty grid)")
    check = config_from_dict
    if command == "detect":
        from ..detection.config import detect_config_from_dict as check
    for run in runs:  # every run's config must be valid before anything starts
        try:
            check(run.config)
        except ValueError as err:
            raise ValueError(f"{source}: run {run.method} {run.settings}: {err}") from None
    return spec


def override_spec(data: Mapping[str, Any], overrides: Sequence[str] = (),
                  seeds: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """The spec mapping with ``--set PATH=VALUE`` overrides and ``--seeds`` applied.

    ``PATH`` is dotted (``base.epochs``, ``methods.OLS.alpha``, ``grid.noise_rate``, ``title``)
    and ``VALUE`` is read as YAML (``2``, ``[0.0, 0.4]``, ``true``). Method names may hold
    dots: what lies between ``methods.`` and the last dot is the name.
    """
    import yaml

    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected PATH=VALUE, e.g. base.epochs=2 or grid.seed=[0,1]")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        if parts[0] == "methods" and len(parts) > 2:  # a method name may itself hold dots ("LS 0.1")
            name = ".".join(parts[1:-1])
            parts = ["methods", name, parts[-1]]
        if parts[0] not in SPEC_KEYS:
            raise ValueError(f"--set {item!r}: unknown key {parts[0]!r}; a spec has {', '.join(SPEC_KEYS)}")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                if parts[0] == "methods" and i == 1:
                    raise ValueError(f"--set {item!r}: no method {part!r}; the spec has "
                                     f"{', '.join(map(str, out.get('methods') or {})) or 'none'}")
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    if seeds is not None:
        out.setdefault("grid", {})
        out["grid"] = {**(out["grid"] or {}), "seed": [int(v) for v in seeds]}
    return out


def load_spec(path: str, overrides: Sequence[str] = (), seeds: Optional[Sequence[int]] = None) -> SweepSpec:
    """Read and check a spec file, or a shipped spec by name (``table7-noise-digits``).

    ``overrides`` and ``seeds`` change it before the check (:func:`override_spec`).
    """
    path = resolve(path, "spec")
    if seeds is not None and len(set(seeds)) < len(seeds):
        twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
        raise ValueError(f"--seeds lists {', '.join(map(str, twice))} more than once: each seed is one run "
                         "(the same folder); give each seed once")
    spec = parse_spec(override_spec(read_yaml(path), overrides, seeds), path)
    spec.overrides = [f"--set {o}" for o in overrides] + ([f"--seeds {' '.join(map(str, seeds))}"]
                                                             if seeds is not None else [])
    return spec
