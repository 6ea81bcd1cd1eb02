"""Figures of ``ols eval``: reliability diagram, soft labels (paper Fig. 1), t-SNE (Fig. 3)."""

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
    """Accuracy against confidence per bin, with the gap to the diagonal and the ECE."""
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
    ax.bar(centres, acc, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(centres[filled], (conf - acc)[filled], bottom=acc[filled], width=width, fill=False, hatch="///",
           edgecolor="tab:red", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title}\nECE {ece:.2f}% ({n_bins} bins)")
    ax.legend(loc="lower right", fontsize=8)
    axc.bar(centres, count / max(count.sum(), 1), width=width, color="gray", edgecolor="black")
    axc.set(xlabel="confidence (top probability)", ylabel="share of images")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def soft_label_figure(soft: np.ndarray, classes: Sequence[int], names: Sequence[str], path: Path,
                      title: str) -> Path:
    """Heatmap of the ``(K, K)`` soft labels (log10) and, for ``classes``, bar plots on a log scale."""
    plt = pyplot()
    k = soft.shape[0]
    fig = plt.figure(figsize=(12.5, max(5.2, 1.9 * len(classes))), layout="constrained")
    grid = fig.add_gridspec(len(classes) or 1, 2, width_ratios=[1, 1.2])
    ax = fig.add_subplot(grid[:, 0])
    positive = soft[soft > 0]
    floor = np.log10(positive.min()) if positive.size else -6
    im = ax.imshow(np.log10(np.maximum(soft, 10 ** floor)), cmap="viridis")
    ax.set(title=title, xlabel="class k of the soft label", ylabel="target class c")
    fig.colorbar(im, ax=ax, label="log10 probability", shrink=0.8)
    for i, c in enumerate(classes):
        bar_ax = fig.add_subplot(grid[i, 1])
        colours = ["tab:red" if j == c else "tab:blue" for j in range(k)]
        bar_ax.bar(np.arange(k), np.maximum(soft[c], 1e-12), color=colours)
        bar_ax.set_yscale("log")
        bar_ax.set_title(f"soft label of class {c} ({names[c]})", fontsize=9)
        bar_ax.set_ylim(max(10 ** floor, 1e-6), 1.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tsne_figure(features: np.ndarray, labels: np.ndarray, path: Path, title: str,
                seed: int = 0, max_points: int = 5000, groups: Optional[Sequence[int]] = None) -> Path:
    """A 2-D t-SNE (scikit-learn) of ``(N, D)`` features, coloured by class (or group)."""
    from sklearn.manifold import TSNE

    plt = pyplot()
    rng = np.random.default_rng(seed)
    if features.shape[0] > max_points:
        keep = rng.choice(features.shape[0], max_points, replace=False)
        features, labels = features[keep], labels[keep]
    perplexity = float(min(30, max(5, (features.shape[0] - 1) // 3)))
    xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    colour = np.asarray(groups)[labels] if groups is not None else labels
    fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
    ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap="tab20" if colour.max() < 20 else "nipy_spectral", s=4)
    ax.set(title=title + (" (colour = group)" if groups is not None else " (colour = class)"),
           xticks=[], yticks=[])
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
