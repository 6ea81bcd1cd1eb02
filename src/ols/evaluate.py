"""``ols eval RUN_DIR``: the paper's evaluations of one trained run, written to ``eval.json``.

Accuracy, NLL and ECE with a reliability diagram, always; on request, FGSM/PGD error
(Tables VIII-IX), KL to CIFAR-10H's human labels (Table XII), a snapshot ensemble
(Table III), a t-SNE of the features (Fig. 3), and the learned soft labels (Fig. 1) with,
where the true class groups are known, the share of their mass inside the group.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import CHECKPOINT, SNAPSHOTS, load_checkpoint, load_part, non_finite_tensors
from .config import saved_config
from .data import load_dataset
from .data.batches import make_source
from .data.download import download_human_probs
from .data.holdout import held_out_split, temperature_split
from .engine import held_out_temperature, predict
from .eval import (
    average_probs,
    classification_metrics,
    fgsm,
    human_kl,
    pgd,
    pick_uniform,
    probability_metrics,
    within_group_share,
)
from .eval.attacks import parse_fraction
from .eval.human import load_human_probs
from .eval.plots import figure_or_notice, reliability_diagram, soft_label_figure, training_curves, tsne_figure
from .losses.protocol import soft_labels_of
from .models import Classifier
from .models.pair import NetworkPair, ensemble_log_probs
from .run_setup import build_loss, build_model
from .rundir import RunLock, read_json, read_jsonl, refuse_other_kind, write_json
from .utils.dataclass_cli import option as _opt
from .utils.device import resolve_device, settings_line

ATTACKS = ("fgsm", "pgd")
#: what ``ols eval --exits`` reports
EXIT_REPORTS = ("deepest", "all")


@dataclass
class EvalOptions:
    """What ``ols eval`` computes besides accuracy and calibration; each field is a flag of the same name."""

    checkpoint: Optional[str] = _opt(None, "evaluate this checkpoint or snapshot instead of checkpoint.pt")
    attack: List[str] = _opt([], "L-inf adversarial error, one or both (Tables VIII-IX)", choices=ATTACKS)
    eps: str = _opt("8/255", "attack radius in pixel units, e.g. 8/255")
    steps: int = _opt(20, "PGD steps")
    step_size: Optional[str] = _opt(None, "PGD step in pixel units, e.g. 2/255 (unset: 2.5*eps/steps)")
    human_probs: Optional[str] = _opt(None, "CIFAR-10H cifar10h-probs.npy: KL to human labels")
    download: bool = _opt(False, "fetch the --human-probs file to that path first if it is missing")
    ensemble: List[int] = _opt([], "also average N snapshots spread over training, for each N "
                               "(needs --save-every)")
    tsne: bool = _opt(False, "t-SNE PNG of the penultimate features")
    soft_labels: bool = _opt(False, "heatmap and bar plots of the soft labels")
    classes: List[int] = _opt([], "classes for the soft-label bar plots")
    exits: str = _opt("deepest", "deepest, or all: also every exit of a multi-exit model (--exits byot) "
                      "and the ensemble of its exits (mean of logits)")
    save_predictions: bool = _opt(False, "write predictions.npz")
    curves: bool = _opt(True, "draw the run's training curves (curves.png) from its metrics.jsonl")
    data_dir: Optional[str] = _opt(None, "the dataset's folder, where it is no longer where the run read it "
                                         "(config.json's data_dir)")
    device: str = _opt("auto", "cpu, cuda or auto")
    batch_size: int = _opt(256, "evaluation batch size")
    seed: int = _opt(0, "seed of the PGD random start")


    def validate(self) -> None:
        """Raise a ``ValueError`` naming the flag of the first option with a bad value."""
        bad = [a for a in self.attack if a not in ATTACKS]
        if bad:
            raise ValueError(f"--attack must be fgsm or pgd, got {bad[0]!r}")
        for flag, text in (("--eps", self.eps), ("--step-size", self.step_size)):
            if text is not None:
                try:
                    value = parse_fraction(text)
                except ValueError as err:
                    raise ValueError(f"{flag}: {err}") from None
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{flag} must be a finite radius >= 0 in pixel units, got {text!r}")
        for flag, value in (("--steps", self.steps), ("--batch-size", self.batch_size)):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if self.exits not in EXIT_REPORTS:
            raise ValueError(f"--exits must be one of {', '.join(EXIT_REPORTS)}, got {self.exits!r}")
        if any(n < 1 for n in self.ensemble):
            raise ValueError(f"--ensemble sizes must be at least 1, got {self.ensemble}")
        if self.download and not self.human_probs:
            raise ValueError("ols eval --download fetches CIFAR-10H's labels to --human-probs PATH; add it, "
                             "or drop --download (the dataset itself: ols train --download)")
        if self.classes and not self.soft_labels:
            raise ValueError("--classes picks the bar plots of --soft-labels; add --soft-labels or drop "
                             "--classes")
        default_steps = next(f.default for f in fields(self) if f.name == "steps")
        if (self.step_size is not None or self.steps != default_steps) and "pgd" not in self.attack:
            raise ValueError("--steps and --step-size set PGD; add --attack pgd or drop them")


#: options a sweep spec's ``eval:`` may set (the rest belong to the machine or the run directory)
SPEC_EVAL_KEYS = tuple(f.name for f in fields(EvalOptions) if f.name not in ("checkpoint", "device"))


def _model(cfg, data, state: Dict[str, Any], device: torch.device, source: Any = "checkpoint") -> nn.Module:
    model = build_model(cfg, data, device, for_eval=True)  # a two-network run: their NetworkPair
    what = (f"networks ({cfg.model} and {cfg.peer_model or cfg.model})" if isinstance(model, NetworkPair)
            else f"model ({cfg.model})")
    load_part(model, state, what, source)
    return model.eval()


def _soft_labels(cfg, data, ckpt: Dict[str, Any], num_exits: int = 1) -> Optional[torch.Tensor]:
    """The run's learned soft labels: its loss rebuilt and loaded from the checkpoint (``None``: none)."""
    if "criterion" not in ckpt:  # a snapshot holds the model only
        return None
    criterion = build_loss(cfg, data.num_classes, data.train_y.shape[0], num_exits)
    load_part(criterion, ckpt["criterion"], f"loss state ({cfg.loss})", "the checkpoint")
    return soft_labels_of(criterion)


def _attack_logits(model, source, labels, attack: str, opts: EvalOptions, device) -> torch.Tensor:
    eps = parse_fraction(opts.eps)
    step = parse_fraction(opts.step_size) if opts.step_size else None
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    out, start = [], 0
    for x, _ in source.test(opts.batch_size):
        y = labels[start : start + x.shape[0]]
        start += x.shape[0]
        if attack == "fgsm":
            adv = fgsm(model, x, y, eps)
        else:
            adv = pgd(model, x, y, eps, opts.steps, step, generator=gen)
        with torch.no_grad():
            out.append(model(adv).float())
    return torch.cat(out)


@torch.no_grad()
def exit_metrics(model: Classifier, source: Any, labels: torch.Tensor, batch_size: int,
                 name: str = "the model") -> Dict[str, Dict[str, float]]:
    """Metrics of every exit (``"0"`` the deepest) and of ``"ensemble"``, the mean of the exits' logits.

    BYOT's own code selects its checkpoints by that ensemble; the run reports the deepest exit.
    """
    if model.num_exits == 1:
        raise ValueError(f"--exits all: {name} has one exit; train with --exits byot to get several")
    model.eval()
    per_batch = [[z.float() for z in model.forward_exits(x)] for x, _ in source.test(batch_size)]
    logits = [torch.cat(zs) for zs in zip(*per_batch)]  # per exit, (N, K)
    out = {str(i): classification_metrics(z, labels) for i, z in enumerate(logits)}
    out["ensemble"] = classification_metrics(torch.stack(logits).mean(0), labels)
    return out


@torch.no_grad()
def member_metrics(pair: NetworkPair, source: Any, labels: torch.Tensor,
                   batch_size: int) -> Dict[str, Dict[str, float]]:
    """Metrics of each network of a two-network run (``"1"``, ``"2"``) and of ``"ensemble"`` (mean softmax).

    The run's own test error is the ensemble's (DivideMix tests the two networks together).
    """
    pair.eval()
    logits = torch.cat([pair(x, members=True).float() for x, _ in source.test(batch_size)], dim=1)  # (2,N,K)
    out = {str(m + 1): classification_metrics(logits[m], labels) for m in range(2)}
    out["ensemble"] = classification_metrics(ensemble_log_probs(logits), labels)
    return out


def _snapshot_epochs(run_dir: Path) -> Dict[int, Path]:
    """``epoch -> snapshots/epoch_NNNN.pt``; any other file there is named in a warning and left out."""
    import re
    import warnings

    folder = run_dir / SNAPSHOTS
    found = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    named = {p: re.fullmatch(r"epoch_(\d+)\.pt", p.name) for p in found}
    stray = [p.name for p, m in named.items() if m is None]
    if stray:
        warnings.warn(f"{folder}: left out of the ensemble, not named epoch_NNNN.pt: {', '.join(stray)}",
                      stacklevel=3)
    return {int(m.group(1)): p for p, m in named.items() if m is not None}


@dataclass
class Evaluation:
    """What ``ols eval`` works on, loaded once: the run, its model, the test set and its logits.

    Each section (:data:`SECTIONS`) reads it and adds to ``result`` (``eval.json``) and
    ``files`` (what it wrote); ``adv_logits`` carries the attacks' logits to the saved
    predictions.
    """

    run: Path
    opts: EvalOptions
    cfg: Any
    ckpt: Dict[str, Any]
    ckpt_path: Path
    data: Any
    source: Any
    labels: torch.Tensor
    model: Classifier
    device: torch.device
    logits: torch.Tensor
    human: Optional[torch.Tensor] = None
    result: Dict[str, Any] = field(default_factory=dict)
    files: Dict[str, str] = field(default_factory=dict)
    adv_logits: Dict[str, torch.Tensor] = field(default_factory=dict)

    def draw(self, key: str, make: Any, *args: Any, **kwargs: Any) -> None:
        """A figure, or one notice without matplotlib (the numbers are kept either way)."""
        path = figure_or_notice(make, *args, **kwargs)
        if path is not None:
            self.files[key] = str(path)

    def test_batches(self):
        return self.source.test(self.opts.batch_size)


def load_evaluation(run_dir: str, opts: EvalOptions, verbose: bool = True) -> Evaluation:
    """Check and load everything an evaluation needs; every refusal comes before the slow parts."""
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.json); train one with `ols train`")
    refuse_other_kind(run, "train", evaluating=True)
    ckpt_path = Path(opts.checkpoint) if opts.checkpoint else run / CHECKPOINT
    if not ckpt_path.is_file():
        if opts.checkpoint:
            snaps = sorted(p.name for p in (run / SNAPSHOTS).glob("epoch_*.pt"))
            have = (f"{run / SNAPSHOTS} holds {', '.join(snaps)}" if snaps
                    else f"{run} has no snapshots (train with --save-every N to keep them)")
            raise ValueError(f"--checkpoint {ckpt_path}: no such file; {have}")
        raise ValueError(f"{run_dir} has no checkpoint ({ckpt_path.name}); was the run started by this "
                         "version of ols? Pass --checkpoint FILE to use another")
    opts.validate()
    cfg = saved_config(read_json(run / "config.json"), run / "config.json")
    ckpt = load_checkpoint(ckpt_path)
    device = resolve_device(opts.device)
    data = load_dataset(cfg.dataset, opts.data_dir or cfg.data_dir, **cfg.data_args)
    source = make_source(cfg.dataset, data, device, "none", num_workers=cfg.num_workers, seed=cfg.seed)
    labels = data.test_y.to(device)
    if opts.download and opts.human_probs:
        download_human_probs(opts.human_probs)
    human = (load_human_probs(opts.human_probs, labels.shape[0], data.num_classes)
             if opts.human_probs else None)  # checked before the slow parts
    bad_weights = non_finite_tensors(ckpt["model"])
    if bad_weights:
        names = ", ".join(bad_weights[:3]) + (", ..." if len(bad_weights) > 3 else "")
        raise ValueError(f"{ckpt_path} holds non-finite model weights ({names}): the run diverged, so its "
                         "metrics would mean nothing; evaluate an earlier snapshot with --checkpoint")
    model = _model(cfg, data, ckpt["model"], device, ckpt_path)
    if verbose:
        print(settings_line(device, amp=False, channels_last=False, what="evaluating"), flush=True)
        holder = RunLock.holder(run)
        print(evaluated_text(ckpt_path.name, ckpt.get("epoch"), cfg.epochs, holder, run), flush=True)
    logits = predict(model, source.test(opts.batch_size))
    return Evaluation(run, opts, cfg, ckpt, ckpt_path, data, source, labels, model, device, logits, human)


def evaluated_text(name: str, epoch: Optional[int], epochs: int, holder: Optional[str], run: Path) -> str:
    """The line that says what ``ols eval`` evaluates: the checkpoint, its epoch, a run still training."""
    text = f"evaluating {name}: epoch {epoch if epoch is not None else '?'} of {epochs}"
    if holder:
        text += (f"; {run} is still training ({holder} holds its .lock), so this is its last saved epoch, "
                 "not its result")
    return text


def metrics_section(ev: Evaluation) -> None:
    """Accuracy, NLL, ECE and AURC; temperature scaling on the held-out split; the reliability diagram."""
    ev.result.update({"checkpoint": str(ev.ckpt_path), "epoch": ev.ckpt.get("epoch"),
                      "epochs": ev.cfg.epochs, "still_training": RunLock.holder(ev.run) is not None,
                      **{f"test_{k}": v for k, v in classification_metrics(ev.logits, ev.labels).items()}})
    ev.result.update(_temperature(ev.cfg, ev.ckpt, ev.model, ev.source, ev.logits, ev.labels,
                                  ev.opts.batch_size, ev.data.train_y.numpy()))
    if ev.opts.exits == "all":
        ev.result["exits"] = exit_metrics(ev.model, ev.source, ev.labels, ev.opts.batch_size, ev.cfg.model)
    if isinstance(ev.model, NetworkPair):
        ev.result["networks"] = member_metrics(ev.model, ev.source, ev.labels, ev.opts.batch_size)
    ev.draw("reliability", reliability_diagram, torch.softmax(ev.logits, 1), ev.labels,
            ev.run / "reliability.png", f"{ev.cfg.loss} on {ev.cfg.dataset}")


def attacks_section(ev: Evaluation) -> None:
    """FGSM/PGD error (Tables VIII-IX)."""
    opts = ev.opts
    for attack in opts.attack:
        ev.adv_logits[attack] = _attack_logits(ev.model, ev.source, ev.labels, attack, opts, ev.device)
        adv = classification_metrics(ev.adv_logits[attack], ev.labels)
        ev.result[f"{attack}_err"], ev.result[f"{attack}_top5_err"] = adv["top1_err"], adv["top5_err"]
    if opts.attack:
        pgd_settings = {"pgd_steps": opts.steps, "pgd_step_size": opts.step_size or "2.5*eps/steps"}
        ev.result["attack"] = {"eps": parse_fraction(opts.eps), "eps_text": opts.eps,
                               **(pgd_settings if "pgd" in opts.attack else {})}


def human_section(ev: Evaluation) -> None:
    """KL to CIFAR-10H's human labels (Table XII)."""
    if ev.human is not None:
        ev.result["human_kl"] = human_kl(ev.human.to(ev.device), ev.logits, ev.labels)


def ensemble_section(ev: Evaluation) -> None:
    """Snapshot ensembles of N members spread over training (Table III)."""
    if not ev.opts.ensemble:
        return
    snaps = _snapshot_epochs(ev.run)
    chosen = {n: pick_uniform(list(snaps), n) for n in ev.opts.ensemble}  # checks every N first
    cache: Dict[int, torch.Tensor] = {}
    ev.result["ensemble"] = {}
    for n, epochs in chosen.items():
        for e in epochs:
            if e not in cache:
                member = _model(ev.cfg, ev.data, load_checkpoint(snaps[e])["model"], ev.device, snaps[e])
                cache[e] = predict(member, ev.test_batches())
        ens = probability_metrics(average_probs([cache[e] for e in epochs]), ev.labels)
        ev.result["ensemble"][str(n)] = {"epochs": epochs, **{f"test_{k}": v for k, v in ens.items()}}


def tsne_section(ev: Evaluation) -> None:
    """A t-SNE of the penultimate features (Fig. 3)."""
    if not ev.opts.tsne:
        return
    with torch.no_grad():
        feats = torch.cat([ev.model.features(x).float().cpu() for x, _ in ev.test_batches()])
    ev.draw("tsne", tsne_figure, feats.numpy(), ev.data.test_y.numpy(), ev.run / "tsne.png",
            f"t-SNE of test features, {ev.cfg.loss}", groups=ev.data.groups, names=ev.data.class_names)


def curves_section(ev: Evaluation) -> None:
    """The run's training curves from its ``metrics.jsonl`` (``curves.png``)."""
    log = ev.run / "metrics.jsonl"
    if not ev.opts.curves or not log.is_file():
        return
    metrics = read_jsonl(log)
    if metrics:
        ev.draw("curves", training_curves, metrics, ev.run / "curves.png",
                f"{ev.cfg.loss} on {ev.cfg.dataset}: {ev.run.name}")


def soft_labels_section(ev: Evaluation) -> None:
    """The learned soft labels (Fig. 1), their largest entries, and the in-group share (known groups)."""
    if not ev.opts.soft_labels:
        return
    cfg, data = ev.cfg, ev.data
    soft = _soft_labels(cfg, data, ev.ckpt, ev.model.num_exits)
    if soft is None:  # a CE run among OLS runs: the rest of the evaluation goes on
        why = (f"the loss {cfg.loss!r} of this run learns none" if "criterion" in ev.ckpt
               else f"{ev.ckpt_path.name} is a snapshot, which holds the model only (use checkpoint.pt)")
        print(f"--soft-labels: skipped, {why}", file=sys.stderr, flush=True)
        ev.result["soft_labels_note"] = f"skipped: {why}"
        return
    classes = ev.opts.classes or list(range(min(3, data.num_classes)))
    bad = [c for c in classes if not 0 <= c < data.num_classes]
    if bad:
        raise ValueError(f"--classes {bad} outside [0, {data.num_classes})")
    np.save(ev.run / "soft_labels.npy", soft.numpy())  # the numbers, with or without matplotlib
    ev.files["soft_labels_matrix"] = str(ev.run / "soft_labels.npy")
    ev.result["soft_labels_top"] = soft_label_rows(soft, classes, data.class_names)
    ev.draw("soft_labels", soft_label_figure, soft.numpy(), classes, data.class_names,
            ev.run / "soft_labels.png", f"{cfg.loss}: soft labels")
    if data.groups is not None:
        ev.result["soft_label_group_share"] = within_group_share(soft, data.groups)


def predictions_section(ev: Evaluation) -> None:
    """``predictions.npz``: the test logits and targets, and the attacks' logits."""
    if not ev.opts.save_predictions:
        return
    arrays = {"logits": ev.logits.cpu().numpy(), "targets": ev.data.test_y.numpy()}
    for attack, z in ev.adv_logits.items():
        arrays[f"adv_logits_{attack}"] = z.cpu().numpy()
    np.savez(ev.run / "predictions.npz", **arrays)
    ev.files["predictions"] = str(ev.run / "predictions.npz")


#: the sections of ``ols eval``, in order (the saved predictions come after the attacks)
SECTIONS = (metrics_section, curves_section, attacks_section, human_section, ensemble_section, tsne_section,
            soft_labels_section, predictions_section)


def evaluate_run(run_dir: str, opts: Optional[EvalOptions] = None, verbose: bool = True) -> Dict[str, Any]:
    """Evaluate the run in ``run_dir`` as ``opts`` asks; write ``eval.json`` and figures there.

    Load (:func:`load_evaluation`), run each of :data:`SECTIONS`, write.
    """
    ev = load_evaluation(run_dir, opts or EvalOptions(), verbose)
    for section in SECTIONS:
        section(ev)
    ev.result["files"] = ev.files
    write_json(ev.run / "eval.json", ev.result)
    if verbose:
        print(format_table(ev.result))
    return ev.result


def _temperature(cfg, ckpt, model, source, logits, labels, batch_size: int,
                 true_train: np.ndarray) -> Dict[str, Any]:
    """Temperature scaling as the run fitted it, or why there is none.

    On its clean held-out set (``--meta-size``) with the clean labels, else on its ``--val-fraction``
    split with the labels as trained.
    """
    meta = ckpt["meta_index"].numpy() if "meta_index" in ckpt else np.zeros(0, dtype=np.int64)
    if not cfg.val_fraction and not len(meta):
        return {"temperature_note": "no held-out images: train with --meta-size N (a clean set) or "
                                    "--val-fraction 0.1 to fit T"}
    noisy = ckpt["noisy_labels"].numpy() if "noisy_labels" in ckpt else None
    if noisy is None:
        return {"temperature_note": "the checkpoint holds no training labels to rebuild the held-out split"}
    held = held_out_split(noisy, cfg.val_fraction, cfg.seed)[1] if cfg.val_fraction else meta[:0]
    index, held_y, what = temperature_split(meta, held, true_train, noisy)
    fitted = held_out_temperature(model, source.held_out(index, batch_size),
                                  torch.as_tensor(held_y, device=logits.device), logits, labels)
    return {**fitted, "temperature_fitted_on": what}


def soft_label_rows(soft: torch.Tensor, classes: List[int], names: Sequence[str],
                    top: int = 3) -> Dict[str, Any]:
    """For each class in ``classes``: its soft label's own entry and its ``top`` largest others."""
    out = {}
    for c in classes:
        row = soft[c].float()
        others = [k for k in torch.argsort(row, descending=True).tolist() if k != c][:top]
        out[str(names[c])] = {"self": float(row[c]),
                              "others": [(str(names[k]), float(row[k])) for k in others]}
    return out


def format_table(result: Dict[str, Any]) -> str:
    """The short table ``ols eval`` prints."""
    epoch = f"epoch {result.get('epoch')} of {result.get('epochs')}" + (
        " (the run was still training)" if result.get("still_training") else "")
    rows = [("evaluated", f"{Path(result['checkpoint']).name}, {epoch}"),
            ("test top-1 error (%)", result["test_top1_err"]),
            ("test top-5 error (%)", result["test_top5_err"]),
            ("test NLL", result["test_nll"]), ("test ECE (%, 15 bins)", result["test_ece"])]
    if "test_ece_signed" in result:
        sign = result["test_ece_signed"]
        word = "over-confident" if sign > 0 else "under-confident" if sign < 0 else "calibrated"
        rows.append(("mean confidence - accuracy (%)", f"{sign:+.4g} ({word})"))
        rows.append(("test AURC (%, risk-coverage area)", result["test_aurc"]))
    if "temperature" in result:
        where = (result.get("temperature_fitted_on")
                 or f"{result['held_out_samples']} held-out training images")
        rows += [("temperature T", result["temperature"]), ("T fitted on", where),
                 ("test NLL at T", result["test_nll_ts"]), ("test ECE at T (%)", result["test_ece_ts"])]
    elif "temperature_note" in result:
        rows.append(("temperature scaling", result["temperature_note"]))
    for key in ("fgsm_err", "pgd_err"):
        if key in result:
            eps = result["attack"]["eps_text"]
            rows.append((f"{key[:-4].upper()} top-1 error (%), eps {eps}", result[key]))
    if "human_kl" in result:
        rows.append(("KL(human || model), correct images", result["human_kl"]))
    for key, metrics in result.get("exits", {}).items():
        what = {"ensemble": "ensemble of the exits", "0": "exit 0 (deepest)"}.get(key, f"exit {key}")
        rows.append((f"{what}: top-1 error (%)", metrics["top1_err"]))
    for key, metrics in result.get("networks", {}).items():
        what = "ensemble of the two networks" if key == "ensemble" else f"network {key}"
        rows.append((f"{what}: top-1 error (%)", metrics["top1_err"]))
    for n, ens in result.get("ensemble", {}).items():
        rows.append((f"ensemble of {n} snapshots: top-1 error (%)", ens["test_top1_err"]))
    for name, row in result.get("soft_labels_top", {}).items():
        others = ", ".join(f"{other} {value:.3f}" for other, value in row["others"])
        rows.append((f"soft label of {name}", f"itself {row['self']:.3f}; then {others}"))
    if "soft_label_group_share" in result:
        share = result["soft_label_group_share"]
        rows.append(("soft-label mass inside the true group (chance)",
                     f"{share['share']:.3f} ({share['chance']:.3f})"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value:.4g}" if isinstance(value, float) else f"{name:<{width}}  {value}"
             for name, value in rows]
    return "\n".join(lines + [f"{k}: {v}" for k, v in result["files"].items()])

