"""Figures of ``ols eval``: reliability diagram, soft labels (paper Fig. 1), t-SNE (Fig. 3), curves."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from torch import Tensor

from .calibration import calibration_bins


def pyplot():
    """The pyplot module on the Agg backend, or an install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("figures need matplotlib: pip install 'ols[plot]'") from None
    return plt


_noticed = False


def figure_or_notice(make: Callable[..., Path], *args: Any, **kwargs: Any) -> Optional[Path]:
    """``make(*args, **kwargs)`` when matplotlib is installed; else ``None`` and one notice per process.

    The numbers never depend on matplotlib: ``ols eval`` and ``ols demo`` print and save them
    either way, and skip only the figures. A figure that fails to draw (an older matplotlib, say)
    is one line on stderr naming it, and the rest goes on.
    """
    global _noticed
    if importlib.util.find_spec("matplotlib") is None:
        if not _noticed:
            _noticed = True
            print("ols: matplotlib is not installed, so no figures are drawn (the numbers are complete); "
                  "pip install 'ols[plot]' for them", file=sys.stderr)
        return None
    try:
        return make(*args, **kwargs)
    except Exception as err:  # a figure is never worth the numbers: they are written either way
        print(f"ols: could not draw {getattr(make, '__name__', 'a figure')} ({type(err).__name__}: {err}); "
              "the numbers are complete", file=sys.stderr)
        return None


def reliability_diagram(probs: Tensor, target: Tensor, path: Path, title: str, n_bins: int = 15) -> Path:
    """Per confidence bin, the accuracy and the mean confidence side by side, with the ECE.

    A calibrated model's two bars are equal (and on the diagonal); an under-confident one's
    confidence bar is the shorter. Below, the share of images in each bin.
    """
    plt = pyplot()
    count, conf_sum, hit_sum = (t.numpy() for t in calibration_bins(probs, target, n_bins))
    filled = count > 0
    acc = np.where(filled, hit_sum / np.maximum(count, 1), 0.0)
    conf = np.where(filled, conf_sum / np.maximum(count, 1), 0.0)
    ece = 100 * np.abs(conf_sum - hit_sum).sum() / max(count.sum(), 1)
    edges = np.linspace(0, 1, n_bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / n_bins
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True,
                                  layout="constrained")  # gridspec_kw: matplotlib 3.5 has no height_ratios=
    ax.bar(centres[filled] - width / 4, acc[filled], width=width / 2, color="tab:blue", edgecolor="black",
           label="accuracy")
    ax.bar(centres[filled] + width / 4, conf[filled], width=width / 2, color="tab:orange", edgecolor="black",
           label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    under = float((conf_sum - hit_sum).sum()) < 0
    ax.set(ylabel="accuracy / confidence", xlim=(0, 1), ylim=(0, 1),
           title=f"{title}\nECE {ece:.2f}% ({n_bins} bins; {'under' if under else 'over'}-confident overall)")
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(centres, count / max(count.sum(), 1), width=width, color="gray", edgecolor="black")
    axc.set(xlabel="confidence (top probability)", ylabel="share of images")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: the soft-label heatmaps' fixed colour range, log10 probability: the same colour means the same
#: probability in every figure, so a nearly uniform matrix looks nearly uniform
HEATMAP_LOG_RANGE = (-3.0, 0.0)


def soft_label_figure(soft: np.ndarray, classes: Sequence[int], names: Sequence[str], path: Path,
                      title: str) -> Path:
    """Heatmap of the ``(K, K)`` soft labels and, for ``classes``, bar plots on a log scale.

    The heatmap's colours span a fixed range, log10 probability from -3 to 0 (smaller entries take
    the lowest colour), named in its colour bar; its axes carry the class names up to 30 classes.
    """
    plt = pyplot()
    k = soft.shape[0]
    low, high = HEATMAP_LOG_RANGE
    fig = plt.figure(figsize=(12.5, max(5.2, 1.9 * len(classes))), layout="constrained")
    grid = fig.add_gridspec(len(classes) or 1, 2, width_ratios=[1, 1.2])
    ax = fig.add_subplot(grid[:, 0])
    im = ax.imshow(np.log10(np.maximum(soft, 10 ** low)), cmap="viridis", vmin=low, vmax=high)
    ax.set(title=f"{title}\n(row: a class's soft label; entries range {soft.min():.3g} to {soft.max():.3g})",
           xlabel="class k of the soft label", ylabel="target class c")
    if k <= 30:
        ax.set_xticks(range(k), [str(n) for n in names[:k]], rotation=90, fontsize=7)
        ax.set_yticks(range(k), [str(n) for n in names[:k]], fontsize=7)
    fig.colorbar(im, ax=ax, label="log10 probability (fixed range 1e-3 to 1)", shrink=0.8)
    for i, c in enumerate(classes):
        bar_ax = fig.add_subplot(grid[i, 1])
        colours = ["tab:red" if j == c else "tab:blue" for j in range(k)]
        bar_ax.bar(np.arange(k), np.maximum(soft[c], 1e-12), color=colours)
        bar_ax.set_yscale("log")
        bar_ax.set_title(f"soft label of class {c} ({names[c]})", fontsize=9)
        bar_ax.set_ylim(10 ** low, 1.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tsne_figure(features: np.ndarray, labels: np.ndarray, path: Path, title: str,
                seed: int = 0, max_points: int = 5000, groups: Optional[Sequence[int]] = None,
                names: Optional[Sequence[str]] = None) -> Path:
    """A 2-D t-SNE (scikit-learn) of ``(N, D)`` features, coloured by class (or group), with a legend."""
    from sklearn.manifold import TSNE

    plt = pyplot()
    rng = np.random.default_rng(seed)
    if features.shape[0] > max_points:
        keep = rng.choice(features.shape[0], max_points, replace=False)
        features, labels = features[keep], labels[keep]
    perplexity = float(min(30, max(5, (features.shape[0] - 1) // 3)))
    xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    colour = np.asarray(groups)[labels] if groups is not None else labels
    values = np.unique(colour)
    cmap = plt.get_cmap("tab20" if len(values) <= 20 else "nipy_spectral", max(len(values), 2))
    fig, ax = plt.subplots(figsize=(7.2, 6), layout="constrained")
    for i, v in enumerate(values):
        pick = colour == v
        label = f"group {v}" if groups is not None else (str(names[v]) if names is not None else f"class {v}")
        ax.scatter(xy[pick, 0], xy[pick, 1], color=cmap(i), s=4, label=label)
    if len(values) <= 20:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=3, frameon=False)
    ax.set(title=title + (" (colour = group)" if groups is not None else " (colour = class)"),
           xticks=[], yticks=[])
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def training_curves(metrics: Sequence[dict], path: Path, title: str) -> Path:
    """One run's ``metrics.jsonl`` as curves: loss; train and test error; ECE; the flipped samples' error."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    epochs = [m["epoch"] for m in metrics]
    panels = [("loss", [("train_loss", "training loss")]),
              ("error (%)", [("train_err", "train (labels as trained)"), ("test_top1_err", "test")]),
              ("ECE (%)", [("test_ece", "test")])]
    if any("train_err_noisy_vs_noisy" in m for m in metrics):
        panels.append(("flipped samples' error (%)", [("train_err_noisy_vs_noisy", "vs their wrong labels"),
                                                       ("train_err_noisy_vs_true", "vs their true labels")]))
    if any("label_correction_acc" in m for m in metrics):
        panels.append(("corrected labels (%)", [("label_correction_acc", "right")]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), layout="constrained",
                             squeeze=False)
    for ax, (ylabel, keys) in zip(axes[0], panels):
        for key, label in keys:
            ax.plot(epochs, [m.get(key, np.nan) for m in metrics], marker="." if len(epochs) < 30 else None,
                    label=label)
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
