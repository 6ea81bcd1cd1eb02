"""ols sweep and ols report: spec checking, the table on a fake sweep, and a tiny real sweep."""

import json

import pytest

from ols.cli import main
from ols.experiments.report import make_report
from ols.experiments.spec import parse_spec
from ols.rundir import write_json


def spec(**kw):
    data = {"name": "t", "base": {"dataset": "digits", "epochs": 1},
            "methods": {"CE": {"loss": "ce"}, "OLS": {"loss": "ols"}},
            "grid": {"noise_rate": [0.0, 0.4], "seed": [0, 1]}}
    data.update(kw)
    return data


def test_spec_expands_the_grid(tmp_path):
    s = parse_spec(spec(out=str(tmp_path), grid={"loss_args.update_every": [None, 5], "seed": [0, 1]},
                        methods={"OLS": {"loss": "ols"}}))
    runs = s.runs()
    assert len(runs) == 4 and s.columns == "loss_args.update_every"
    assert runs[2].config["loss_args"] == {"update_every": 5} and runs[2].config["seed"] == 0
    assert runs[0].run_dir == tmp_path / "OLS" / "loss_args.update_every=epoch__seed=0"


@pytest.mark.parametrize("change,msg", [
    ({"grids": {}}, "unknown key 'grids'"),
    ({"grid": {"lerning_rate": [0.1]}}, "'lerning_rate' is not a training setting"),
    ({"grid": {"seed": []}}, "grid key 'seed' has no values, so the sweep would be empty"),
    ({"methods": {}}, "methods: is empty; list at least one method"),  # it used to run base as a method
    ({"base": [{"loss": "ce"}]}, "base: must map names to values, got a list"),
    ({"grid": {"noise_rate": [2.0]}}, "noise_rate must be in \\[0, 1\\]"),
    ({"report": {"columns": "alpha"}}, "report.columns 'alpha' is not a grid key"),
    ({"eval": {"atack": "fgsm"}}, "unknown eval option 'atack'"),
    ({"eval": {"steps": "many"}}, "eval key 'steps' must be int, got 'many'"),
    ({"eval": {"ensemble": [2, "x"]}}, "eval key 'ensemble' must be a list of int"),
    ({"eval": {"device": "cuda"}}, "unknown eval option 'device'"),
    ({"report": {"metrics": ["test_speed"]}}, "metric 'test_speed' has no declared direction"),
    ({"report": {"plots": ["bars"]}}, "unknown plot 'bars'"),
])
def test_spec_errors(change, msg):
    if msg is None:
        assert len(parse_spec(spec(**change)).runs()) == 4
        return
    with pytest.raises(ValueError, match=msg):
        parse_spec(spec(**change))


def test_spec_eval_options_are_normalised():
    # a scalar stands for a one-item list, a number for a text such as eps
    parsed = parse_spec(spec(eval={"attack": "fgsm", "eps": 0.1, "ensemble": 4, "tsne": True}))
    assert parsed.eval == {"attack": ["fgsm"], "eps": "0.1", "ensemble": [4], "tsne": True}


def fake_sweep(root, values):
    """A sweep directory written by hand: rows CE/OLS, columns noise 0.0/0.4, seeds 0/1."""
    runs = []
    for method in ("CE", "OLS"):
        for noise in (0.0, 0.4):
            for seed in (0, 1):
                d = f"{method}/noise_rate={noise}__seed={seed}"
                runs.append({"method": method, "settings": {"noise_rate": noise, "seed": seed}, "dir": d})
                v = values.get((method, noise, seed))
                if v is not None:
                    write_json(root / d / "summary.json", {"test_top1_err": v, "test_ece": 1.0})
    write_json(root / "sweep.json", {"name": "fake", "title": "Fake", "columns": "noise_rate",
                                     "metrics": ["test_top1_err"], "plots": [], "eval": {},
                                     "grid": {"noise_rate": [0.0, 0.4], "seed": [0, 1]},
                                     "methods": ["CE", "OLS"], "runs": runs})


def test_report_table_values(tmp_path):
    fake_sweep(tmp_path, {("CE", 0.0, 0): 10.0, ("CE", 0.0, 1): 12.0, ("CE", 0.4, 0): 30.0,
                          ("CE", 0.4, 1): 34.0, ("OLS", 0.0, 0): 11.0, ("OLS", 0.0, 1): 11.0,
                          ("OLS", 0.4, 0): 20.0})
    text = make_report(str(tmp_path)).read_text()
    # CE at 0.0: mean 11, sample std sqrt(2) = 1.41; CE at 0.4: 32 ± 2.83; OLS: 11 ± 0, 20 from one seed.
    # A tie for the best mean (11 at noise 0.0) puts both in bold.
    assert "| CE | **11.00 ± 1.41** | 32.00 ± 2.83 |" in text
    assert "| OLS | **11.00 ± 0.00** | **20.00 (n = 1)** |" in text and "± 0.00 (n" not in text
    assert "7 of 8 runs finished" in text


def test_report_errors(tmp_path):
    with pytest.raises(ValueError, match="not a sweep directory"):
        make_report(str(tmp_path))
    fake_sweep(tmp_path, {})
    with pytest.raises(ValueError, match="no run of this sweep has finished yet"):
        make_report(str(tmp_path))


@pytest.mark.slow
def test_tiny_sweep_runs_skips_and_resumes(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec(out=str(tmp_path / "sw"), grid={"seed": [1]},
                                    eval={"attack": "fgsm", "eps": "0.1"},
                                    report={"metrics": ["test_top1_err", "fgsm_err"], "plots": ["curves"]})))
    assert main(["sweep", str(path), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 0 already finished, 2 to run" in out
    report = (tmp_path / "sw" / "report.md").read_text()
    assert "| method | test top-1 error (%) | FGSM error (%) |" in report
    assert (tmp_path / "sw" / "curves.png").exists()
    run = tmp_path / "sw" / "OLS" / "seed=1"
    first = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()  # as if it was killed after its last checkpoint
    (tmp_path / "sw" / "CE" / "seed=1" / "eval.json").unlink()  # as if killed while evaluating
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "0 already finished, 2 to run" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 0
    assert json.loads((run / "summary.json").read_text())["test_top1_err"] == first["test_top1_err"]
    assert "--resume" in (run / "sweep.log").read_text()
    assert (tmp_path / "sw" / "CE" / "seed=1" / "eval.json").exists()


def test_single_method_bolds_its_best_setting(tmp_path):
    fake_sweep(tmp_path, {("CE", 0.0, 0): 5.0, ("CE", 0.4, 0): 3.0})
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    sweep["runs"] = [r for r in sweep["runs"] if r["method"] == "CE"]
    sweep["methods"] = ["CE"]
    write_json(tmp_path / "sweep.json", sweep)
    text = make_report(str(tmp_path)).read_text()
    assert "| CE | 5.00 (n = 1) | **3.00 (n = 1)** |" in text and "best setting in bold" in text


@pytest.mark.parametrize("metric,higher", [
    ("test_top1_err", False), ("best_test_top1_err", False), ("test_ece", False), ("human_kl", False),
    ("ensemble.6.test_top1_err", False), ("pgd_top5_err", False), ("train_err_noisy_vs_true", False),
    ("train_err_noisy_vs_noisy", True), ("soft_label_group_share.share", True), ("test_aurc", False),
    ("test_ece_ts", False), ("test_ece_signed", "zero"), ("temperature", None),
])
def test_each_metric_has_the_direction_declared_beside_it(metric, higher):
    from ols.experiments.directions import higher_is_better

    assert higher_is_better(metric) == higher and type(higher_is_better(metric)) is type(higher)


def test_an_empty_spec_is_refused_instead_of_running_a_default_run():
    from ols.experiments.spec import parse_spec

    for data in ({}, {"name": "t", "title": "only a title"}):
        with pytest.raises(ValueError, match="sets no base, methods or grid, so it would sweep one default"):
            parse_spec(data, "empty.yaml")


def test_a_report_asking_for_plots_without_matplotlib_writes_its_tables(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "matplotlib" else True)
    monkeypatch.setattr("ols.eval.plots._noticed", False)
    fake_sweep(tmp_path, {("CE", 0.0, 0): 10.0, ("OLS", 0.0, 0): 11.0})
    spec = json.loads((tmp_path / "sweep.json").read_text())
    write_json(tmp_path / "sweep.json", {**spec, "plots": ["curves", "sweep"]})
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| CE |" in text and "10.00" in text and "![" not in text
    assert capsys.readouterr().err.count("matplotlib is not installed") == 1


def test_a_figure_that_fails_to_draw_is_one_line_and_the_tables_are_written(tmp_path, monkeypatch, capsys):
    """As with a matplotlib too old for a keyword: the report loses the figure, not the numbers."""
    pytest.importorskip("matplotlib")

    def curves_plot(*args, **kwargs):
        raise AttributeError("'Figure' object has no property 'height_ratios'")

    monkeypatch.setattr("ols.experiments.report.curves_plot", curves_plot)
    fake_sweep(tmp_path, {("CE", 0.0, 0): 10.0, ("OLS", 0.0, 0): 11.0})
    spec = json.loads((tmp_path / "sweep.json").read_text())
    write_json(tmp_path / "sweep.json", {**spec, "plots": ["curves"]})
    assert main(["report", str(tmp_path)]) == 0
    assert "| CE |" in (tmp_path / "report.md").read_text()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ols: could not draw curves_plot (AttributeError: 'Figure' object has no property "
                   "'height_ratios'); the numbers are complete"]


def test_set_and_seeds_change_the_spec_before_it_is_checked():
    from ols.experiments.spec import override_spec

    data = spec(methods={"CE": {"loss": "ce"}, "LS 0.1": {"loss": "ls", "loss_args": {"eps": 0.1}}})
    out = override_spec(data, ["base.epochs=3", "methods.LS 0.1.lr=0.05", "grid.noise_rate=[0.2]",
                               "title=a b", "base.loss_args.alpha=0.3"], seeds=[4, 5, 6])
    assert out["base"] == {"dataset": "digits", "epochs": 3, "loss_args": {"alpha": 0.3}}
    assert out["methods"]["LS 0.1"] == {"loss": "ls", "loss_args": {"eps": 0.1}, "lr": 0.05}
    assert out["grid"] == {"noise_rate": [0.2], "seed": [4, 5, 6]} and out["title"] == "a b"
    assert data["base"] == {"dataset": "digits", "epochs": 1}  # the spec read from disk is left as it was
    assert len(parse_spec(out).runs()) == 2 * 1 * 3


@pytest.mark.parametrize("item,msg", [
    ("base.epochs", "expected PATH=VALUE"),
    ("bsae.epochs=2", "unknown key 'bsae'; a spec has"),
    ("methods.OLSS.alpha=0.3", "no method 'OLSS'; the spec has CE, OLS"),
    ("base.epochs.x=2", "base.epochs is not a mapping"),
])
def test_set_errors_name_the_item(item, msg):
    from ols.experiments.spec import override_spec

    with pytest.raises(ValueError, match=msg):
        override_spec(spec(), [item])


def test_sweep_command_line_takes_set_and_seeds(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec(out=str(tmp_path / "sw"))))
    assert main(["sweep", str(path), "--dry-run", "--set", "grid.noise_rate=[0.4]", "--seeds", "7"]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 0 already finished, 2 to run" in out and "'seed': 7" in out and "'seed': 0" not in out
    assert main(["sweep", str(path), "--dry-run", "--set", "methods.X.lr=1"]) == 2
    assert "no method 'X'" in capsys.readouterr().err


def test_report_pairs_each_method_with_the_baseline_by_seed(tmp_path):
    fake_sweep(tmp_path, {("CE", 0.0, 0): 10.0, ("CE", 0.0, 1): 12.0, ("CE", 0.4, 0): 30.0,
                          ("CE", 0.4, 1): 34.0, ("OLS", 0.0, 0): 11.5, ("OLS", 0.0, 1): 12.5,
                          ("OLS", 0.4, 0): 20.0})
    text = make_report(str(tmp_path)).read_text()
    assert "## test top-1 error (%): `test_top1_err` (lower is better)" in text
    # noise 0.0: differences +1.5 and +0.5, mean +1.0, sd 0.7071; t(0.975, 1 df) = 12.7062 by table,
    # half-width 12.7062 * 0.7071 / sqrt(2) = 6.353. Noise 0.4: one pair, -10.
    assert "Difference from CE, paired by seed" in text
    assert "| OLS | +1.00 [-5.35, +7.35] | -10.00 (n = 1) |" in text
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    write_json(tmp_path / "sweep.json", {**sweep, "baseline": "OLS"})
    assert "| CE | -1.00 [-7.35, +5.35] | +10.00 (n = 1) |" in make_report(str(tmp_path)).read_text()


def test_a_clear_paired_difference_is_starred_and_a_bad_baseline_refused():
    from ols.experiments.report import paired_cells

    runs = lambda vals: {"all": [(None, {"seed": s, "m": v}) for s, v in enumerate(vals)]}  # noqa: E731
    table = {"CE": runs([10.0, 11.0, 12.0]), "OLS": runs([9.0, 10.1, 10.9])}
    # differences -1.0, -0.9, -1.1: mean -1.0, sd 0.1, t(0.975, 2 df) = 4.3027, half 0.2484
    assert paired_cells(table, ["all"], "m", {"OLS": "CE"}) == {("OLS", "all"): "-1.00 [-1.25, -0.75]*"}
    with pytest.raises(ValueError, match="report.baseline 'LS' is not a method; the spec has CE, OLS"):
        parse_spec(spec(report={"baseline": "LS"}))


def test_metric_headers_name_the_unit():
    from ols.experiments.directions import DIRECTIONS, HEADERS, metric_header

    assert set(HEADERS) == set(DIRECTIONS)  # every metric with a direction has a heading
    assert metric_header("test_top1_err") == "test top-1 error (%)"
    assert metric_header("ensemble.6.test_top1_err") == "ensemble of 6: test top-1 error (%)"
    assert metric_header("best_test_nll_ts") == "best test NLL after T (nats)"


def test_a_sweep_changed_on_the_command_line_says_so_instead_of_the_description(tmp_path):
    fake_sweep(tmp_path, {("CE", 0.0, 0): 5.0})
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    write_json(tmp_path / "sweep.json", {**sweep, "description": "72 runs fit in about 80 minutes",
                                         "overrides": ["base.epochs=3", "methods={CE: {loss: ce}}"]})
    text = make_report(str(tmp_path)).read_text()
    assert "Changed from the spec on the command line: `base.epochs=3`; `methods={CE: {loss: ce}}`" in text
    assert "72 runs fit" not in text
    write_json(tmp_path / "sweep.json", {**sweep, "description": "72 runs fit in about 80 minutes"})
    assert "72 runs fit" in make_report(str(tmp_path)).read_text()


def test_report_html_is_one_self_contained_page(tmp_path):
    pytest.importorskip("matplotlib")
    fake_sweep(tmp_path, {("CE", 0.0, 0): 5.0, ("OLS", 0.0, 0): 4.0})
    for method, errors in (("CE", [30.0, 20.0]), ("OLS", [28.0, 18.0])):
        rows = [json.dumps({"epoch": e + 1, "test_top1_err": v}) for e, v in enumerate(errors)]
        (tmp_path / f"{method}/noise_rate=0.0__seed=0/metrics.jsonl").write_text("\n".join(rows) + "\n")
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    write_json(tmp_path / "sweep.json", {**sweep, "plots": ["curves"]})
    report = make_report(str(tmp_path))
    page = (tmp_path / "report.html").read_text()
    assert page.lower().startswith("<!doctype html>") and "<h1>Fake</h1>" in page
    assert "<td>CE</td>" in page and "<b>4.00 (n = 1)</b>" in page
    assert "![" in report.read_text() and 'src="data:image/png;base64,iVBOR' in page  # the PNG inside
    assert "curves.png" not in page.replace('alt="curves"', "")


def test_ad_hoc_runs_side_by_side(tmp_path, capsys):
    for name, loss, err in (("a", "ce", 12.5), ("b", "ols", 10.25)):
        run = tmp_path / name
        write_json(run / "summary.json", {"test_top1_err": err, "test_ece": 1.5})
        write_json(run / "config.json", {"loss": loss, "seed": 0, "out": str(run)})
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_top1_err": err}) + "\n")
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "# 2 runs side by side" in text and "Settings in which the runs differ:\n`loss`" in text
    assert "| a | 12.50 |" in text and "| b | 10.25 |" in text and "`ols`" in text
    assert (tmp_path / "cmp" / "report.html").exists()
    (tmp_path / "b" / "summary.json").unlink()
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 2
    assert "not a finished run (no summary.json)" in capsys.readouterr().err


def test_sweep_children_keep_the_users_thread_count():
    from ols.experiments.runner import child_environment

    threads = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    assert child_environment({"PATH": "/bin"}, 3) == {"PATH": "/bin", **threads}
    env = child_environment({"OMP_NUM_THREADS": "1"}, 3)
    assert env["OMP_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "3"


def test_a_temperature_fitted_on_noisy_labels_is_said_so(tmp_path):
    fake_sweep(tmp_path, {("CE", 0.4, 0): 30.0})
    summary = tmp_path / "CE/noise_rate=0.4__seed=0/summary.json"
    fitted = "the held-out split (144 images, labels as trained, with their noise)"
    write_json(summary, {"test_top1_err": 30.0, "test_ece_ts": 3.0, "temperature_fitted_on": fitted})
    text = make_report(str(tmp_path)).read_text()
    assert f"Temperature scaling (the columns after T) was fitted on {fitted}: T then fits the label" in text
    write_json(summary, {"test_top1_err": 30.0, "temperature_fitted_on": "the clean held-out set (20 images, "
                                                                          "clean labels)"})
    assert "T then fits the label noise" not in make_report(str(tmp_path)).read_text()


def test_fifteen_methods_get_fifteen_different_lines():
    from ols.experiments.report import line_style

    styles = [tuple(sorted(line_style(k).items())) for k in range(30)]
    assert len(set(styles)) == 30  # colour and dash together tell every row apart
    assert line_style(0) == {"color": "C0", "linestyle": "-"} and line_style(12)["linestyle"] == "--"
