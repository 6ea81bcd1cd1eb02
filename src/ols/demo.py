"""``make demo``: CE vs LS vs OLS on digits with symmetric label noise, over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from .config import TrainConfig
from .eval.plots import figure_or_notice, pyplot
from .experiments.report import mean_std
from .rundir import read_jsonl
from .trainer import fit

DEMO_LOSSES = ("ce", "ls", "ols")
LABELS = {"ce": "CE (hard labels)", "ls": "LS (eps=0.1)", "ols": "OLS (alpha=0.5)"}


def format_mean_std(values: Sequence[float]) -> str:
    """``"m ± s"`` with the sample standard deviation (0 for a single value)."""
    m, s = mean_std(values)
    return f"{m:5.2f} ± {s:4.2f}"


def results_table(summaries: Dict[str, List[dict]], noise_rate: float) -> str:
    """A Markdown table of test top-1 error and ECE, mean ± std over seeds."""
    n = len(next(iter(summaries.values())))
    lines = [
        f"digits, {100 * noise_rate:.0f}% symmetric label noise, {n} seeds (mean ± std)",
        "",
        "| method | test top-1 error (%) | test ECE (%) |",
        "|---|---|---|",
    ]
    for loss, runs in summaries.items():
        err = format_mean_std([r["test_top1_err"] for r in runs])
        ece = format_mean_std([r["test_ece"] for r in runs])
        lines.append(f"| {LABELS.get(loss, loss)} | {err} | {ece} |")
    return "\n".join(lines)


def plot_demo(out: Path, run_dirs: Dict[str, List[Path]], num_classes: int) -> Path:
    """Learned OLS soft labels vs the LS target, and the test-error curves; returns the PNG."""
    plt = pyplot()
    soft = np.load(run_dirs["ols"][0] / "soft_labels.npy")
    eps = 0.1
    ls_target = (1 - eps) * np.eye(num_classes) + eps / num_classes
    fig, axes = plt.subplots(
        1, 3, figsize=(17, 5), layout="constrained", gridspec_kw={"width_ratios": [1, 1, 1.3]}
    )
    vmin = np.floor(2 * np.log10(min(soft[soft > 0].min(), ls_target.min()))) / 2
    for ax, mat, title in (
        (axes[0], soft, "OLS: learned soft labels (seed 0)"),
        (axes[1], ls_target, "LS: fixed target, eps=0.1"),
    ):
        im = ax.imshow(np.log10(np.clip(mat, 1e-6, None)), cmap="viridis", vmin=vmin, vmax=0.0)
        ax.set_title(title)
        ax.set_xlabel("class k of the soft label")
        ax.set_ylabel("target class c")
        ax.set_xticks(range(num_classes))
        ax.set_yticks(range(num_classes))
    cbar = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    cbar.set_label("log10 probability")

    ax = axes[2]
    for loss, dirs in run_dirs.items():
        curves = np.array([[r["test_top1_err"] for r in read_jsonl(d / "metrics.jsonl")] for d in dirs])
        epochs = np.arange(1, curves.shape[1] + 1)
        mean, std = curves.mean(0), curves.std(0)
        ax.plot(epochs, mean, label=LABELS.get(loss, loss))
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 error (%)")
    ax.set_title(f"test error, mean ± std over {len(next(iter(run_dirs.values())))} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "demo.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def run_demo(
    out: str = "runs/demo",
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 40,
    noise_rate: float = 0.4,
    losses: Sequence[str] = DEMO_LOSSES,
) -> Dict[str, List[dict]]:
    """Train every loss on every seed, print the table and the figure's path."""
    root = Path(out)
    summaries: Dict[str, List[dict]] = {}
    run_dirs: Dict[str, List[Path]] = {}
    for loss in losses:
        for seed in seeds:
            run = root / f"{loss}-seed{seed}"
            cfg = TrainConfig(loss=loss, seed=seed, epochs=epochs, noise_rate=noise_rate, out=str(run))
            summary = fit(cfg, verbose=False, overwrite=True)
            print(f"  {loss:4s} seed {seed}: test error {summary['test_top1_err']:5.2f}%  "
                  f"ECE {summary['test_ece']:5.2f}%  ({summary['seconds']:.1f}s)", flush=True)
            summaries.setdefault(loss, []).append(summary)
            run_dirs.setdefault(loss, []).append(run)
    table = results_table(summaries, noise_rate)
    (root / "results.md").write_text(table + "\n")
    print()
    print(table)
    if "ols" in run_dirs:
        path = figure_or_notice(plot_demo, root, run_dirs, num_classes=10)
        if path is not None:
            print(f"\nfigure: {path}")
    return summaries
