"""What the figures show, read back from the matplotlib objects they draw: the heatmap's fixed colour
range and class names, the reliability diagram's two bars per bin, the t-SNE legend, whole-number
epoch ticks."""

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from ols.eval import plots  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, kept open for the test to read."""
    figures = []
    real = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    monkeypatch.setattr(plots.pyplot(), "close", lambda *a: None)
    return figures


def test_soft_label_heatmap_has_a_fixed_range_and_class_names(tmp_path, drawn):
    names = ["T-shirt", "Trouser", "Pullover", "Dress"]
    nearly_flat = np.full((4, 4), 0.25) + np.diag([0.03] * 4) - 0.01
    plots.soft_label_figure(nearly_flat, [0], names, tmp_path / "s.png", "OLS")
    heatmap = drawn[0].axes[0]
    image = heatmap.get_images()[0]
    assert image.get_clim() == plots.HEATMAP_LOG_RANGE == (-3.0, 0.0)  # not the data's own 0.24-0.27
    assert [t.get_text() for t in heatmap.get_xticklabels()] == names
    assert [t.get_text() for t in heatmap.get_yticklabels()] == names
    assert "entries range 0.24 to 0.27" in heatmap.get_title()
    assert any("fixed range" in ax.get_ylabel() for ax in drawn[0].axes)  # the colour bar says so


def test_reliability_diagram_draws_accuracy_and_confidence_side_by_side(tmp_path, drawn):
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.55, 0.45], [0.9, 0.1]])
    target = torch.tensor([0, 0, 0, 1])  # bins 0.6, 0.7, 0.55 all right: under-confident; 0.9 wrong
    plots.reliability_diagram(probs, target, tmp_path / "r.png", "run")
    ax = drawn[0].axes[0]
    accuracy, confidence = (c for c in ax.containers)
    assert len(accuracy) == len(confidence) == 4  # one pair of bars per filled bin
    assert sorted(round(b.get_height(), 3) for b in accuracy) == [0.0, 1.0, 1.0, 1.0]
    assert sorted(round(b.get_height(), 3) for b in confidence) == [0.55, 0.6, 0.7, 0.9]
    assert all(a.get_x() < c.get_x() for a, c in zip(accuracy, confidence))  # side by side, not stacked
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["perfect calibration", "accuracy", "mean confidence"]


def test_tsne_has_a_legend_naming_classes_or_groups(tmp_path, drawn):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(i * 5, 1, (15, 4)) for i in range(3)])
    labels = np.repeat([0, 1, 2], 15)
    plots.tsne_figure(features, labels, tmp_path / "t.png", "run", names=["cat", "dog", "ship"])
    assert [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()] == ["cat", "dog", "ship"]
    plots.tsne_figure(features, labels, tmp_path / "g.png", "run", groups=[0, 0, 1])
    assert [t.get_text() for t in drawn[1].axes[0].get_legend().get_texts()] == ["group 0", "group 1"]
    assert "(colour = group)" in drawn[1].axes[0].get_title()


def test_training_curves_tick_whole_epochs(tmp_path, drawn):
    metrics = [{"epoch": e, "train_loss": 2.0 / e, "train_err": 50 / e, "test_top1_err": 60 / e,
                "test_ece": 5.0} for e in (1, 2, 3)]
    plots.training_curves(metrics, tmp_path / "c.png", "run")
    for ax in drawn[0].axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ax.get_xticks()


def test_a_sweep_of_one_setting_draws_a_point_per_method(tmp_path, drawn):
    from pathlib import Path

    from ols.experiments.report import sweep_plot

    table = {"CE": {"0.4": [(Path("a"), {"err": 30.0}), (Path("b"), {"err": 32.0})]},
             "OLS": {"0.4": [(Path("c"), {"err": 25.0}), (Path("d"), {"err": 27.0})]}}
    sweep_plot(table, ["0.4"], "noise_rate", "err", tmp_path / "s.png", "one setting")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["CE", "OLS"]  # not a 0.38-0.42 axis
    assert ax.get_xlabel() == "method (noise_rate = 0.4)"
    assert [c.lines[0].get_ydata()[0] for c in ax.containers] == [31.0, 26.0]  # the means over seeds
