"""``make demo``: CE, LS (two strengths) and OLS under symmetric label noise, over seeds, calibrated."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import TrainConfig
from .data.idx import FASHION_MNIST_DIR, FILES
from .eval.plots import figure_or_notice, pyplot
from .experiments.report import mean_std
from .rundir import read_jsonl
from .trainer import fit

#: the demo's methods: name -> (loss, loss keyword arguments, label). LS at eps = 1 - alpha = 0.5 is
#: where OLS starts (its first period's soft labels are uniform: alpha * onehot + (1 - alpha) / K)
METHODS = {
    "ce": ("ce", {}, "CE (hard labels)"),
    "ls": ("ls", {"eps": 0.1}, "LS (eps=0.1)"),
    "ls-0.5": ("ls", {"eps": 0.5}, "LS (eps=0.5, where OLS starts)"),
    "ols": ("ols", {}, "OLS (alpha=0.5)"),
}
#: Fashion-MNIST's laptop subset: the first images of each class in file order
FASHION_SUBSET = {"train_per_class": 150, "test_per_class": 50}


def demo_dataset() -> Tuple[str, Dict[str, int], str]:
    """``(dataset, data_args, description)``: a Fashion-MNIST subset when installed, else the digits."""
    if all((Path(FASHION_MNIST_DIR) / f"{stem}.gz").is_file() for stem in FILES):
        n, m = FASHION_SUBSET["train_per_class"], FASHION_SUBSET["test_per_class"]
        what = f"Fashion-MNIST ({10 * n:,} training, {10 * m:,} test images)"
        return "fashion-mnist", dict(FASHION_SUBSET), what
    return "digits", {}, "digits (Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist)"


def format_mean_std(values: Sequence[float]) -> str:
    """``"m ± s"`` with the sample standard deviation; a single value alone (no spread to show)."""
    m, s = mean_std(values)
    return f"{m:5.2f} ± {s:4.2f}" if len(values) > 1 else f"{m:5.2f}"


def results_table(summaries: Dict[str, List[dict]], noise_rate: float, what: str = "digits") -> str:
    """A Markdown table: test error, ECE, signed ECE, ECE after temperature scaling and T, mean ± std."""
    n = len(next(iter(summaries.values())))
    lines = [
        f"{what}, {100 * noise_rate:.0f}% symmetric label noise, "
        + (f"{n} seeds (mean ± std)" if n > 1 else "1 seed (n = 1: no spread)"),
        "",
        "| method | test error (%) | ECE (%) | confidence − accuracy (%) | ECE after T (%) | T |",
        "|---|---|---|---|---|---|",
    ]
    under = False
    for name, runs in summaries.items():
        cells = [format_mean_std([r[k] for r in runs]) if all(k in r for r in runs) else "–"
                 for k in ("test_top1_err", "test_ece", "test_ece_signed", "test_ece_ts", "temperature")]
        under = under or any(r.get("test_ece_signed", 0) < 0 for r in runs)
        lines.append(f"| {METHODS[name][2] if name in METHODS else name} | " + " | ".join(cells) + " |")
    if under:
        lines += ["", "A negative confidence − accuracy is under-confidence: the model is right more often "
                  "than its top probability says. Smoothed targets (LS at eps=0.5, OLS) train it to, and "
                  "temperature scaling (T < 1, fitted on held-out training images) sharpens it back."]
    lines += ["", "T is fitted by NLL on 10% of the training set, held out (with the same label noise) and "
              "never trained on; ECE after T is the test ECE of softmax(z / T)."]
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
        ax.plot(epochs, mean, label=METHODS[loss][2] if loss in METHODS else loss)
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
    epochs: int = 8,
    noise_rate: float = 0.0,
    methods: Sequence[str] = tuple(METHODS),
    dataset: Optional[str] = None,
) -> Dict[str, List[dict]]:
    """Train every method on every seed, print the table and the figure's path.

    ``dataset`` ``None`` picks :func:`demo_dataset`'s (Fashion-MNIST's subset when installed).
    """
    root = Path(out)
    name, data_args, what = demo_dataset()
    if dataset is not None and dataset != name:
        name, data_args, what = dataset, {}, dataset
    print(f"{what}: {', '.join(METHODS[m][2] for m in methods)}; {len(seeds)} seed(s), {epochs} epochs",
          flush=True)
    summaries: Dict[str, List[dict]] = {}
    run_dirs: Dict[str, List[Path]] = {}
    for method in methods:
        loss, loss_args, _ = METHODS[method]
        for seed in seeds:
            run = root / f"{method}-seed{seed}"
            cfg = TrainConfig(dataset=name, data_args=data_args, loss=loss, loss_args=loss_args, seed=seed,
                              epochs=epochs, noise_rate=noise_rate, val_fraction=0.1, batch_size=32, lr=0.05,
                              out=str(run))
            summary = fit(cfg, verbose=False, overwrite=True)
            print(f"  {method:6s} seed {seed}: test error {summary['test_top1_err']:5.2f}%  "
                  f"ECE {summary['test_ece']:5.2f}% -> {summary['test_ece_ts']:5.2f}% at T = "
                  f"{summary['temperature']:.2f}  ({summary['seconds']:.1f}s)", flush=True)
            summaries.setdefault(method, []).append(summary)
            run_dirs.setdefault(method, []).append(run)
    table = results_table(summaries, noise_rate, what)
    (root / "results.md").write_text(table + "\n")
    print()
    print(table)
    if "ols" in run_dirs:
        path = figure_or_notice(plot_demo, root, run_dirs, num_classes=10)
        if path is not None:
            print(f"\nfigure: {path}")
    return summaries
