"""What a user gets from an installed ols: shipped configs and specs by name, the numbers without
matplotlib, and a wheel whose package list misses nothing."""

import json
import pathlib
import sys

import pytest

from ols.cli import main
from ols.config import load_config
from ols.experiments.spec import load_spec
from ols.presets import resolve, shipped_names

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_shipped_config_and_spec_loads_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: no configs/ folder here
    configs, specs = shipped_names("config"), shipped_names("spec")
    assert len(configs) == len(list((ROOT / "configs").rglob("*.yaml")))
    assert len(specs) == len(list((ROOT / "experiments").glob("*.yaml")))
    assert "cifar100/paper" in configs and "table7-noise-digits" in specs
    for table in ("table2", "table3", "table4", "table6", "table7", "table8", "table9", "table11", "table12",
                  "fig7a", "fig7b", "ols-vs-single", "maxsup-table4"):  # each paper table has its spec
        assert any(n.startswith(table) for n in specs), table
    for laptop in ("table7-noise-digits", "table11-calibration-digits", "table8-adversarial-digits",
                   "fig7a-alpha-digits", "fig7b-update-period-digits", "ols-vs-single-digits",
                   "relations-synthetic", "table7-noise-fashion-mnist", "table11-calibration-fashion-mnist",
                   "fig1-soft-labels-fashion-mnist", "fig7a-alpha-fashion-mnist",
                   "fig7b-update-period-fashion-mnist", "ols-vs-single-fashion-mnist",
                   "competitors-fashion-mnist"):  # and its laptop counterpart
        assert laptop in specs, laptop
    for name in configs:
        load_config(name)
    for name in specs:  # every spec is checked whole: each run's config, its eval options, its report
        spec = load_spec(name)
        assert spec.runs() and spec.name == name
    by_name = load_config("cifar100/paper")
    assert load_config("configs/cifar100/paper.yaml").model == by_name.model == "resnet56"
    with pytest.raises(ValueError, match="config file not found: nowhere/resnet57.*list-presets"):
        resolve("nowhere/resnet57", "config")
    with pytest.raises(ValueError, match=r"cifar100/resnet56-ols; the shipped configs are one recipe per "
                                         r"schedule \(cifar100/paper\).*--model resnet56 --loss ols"):
        resolve("cifar100/resnet56-ols", "config")  # a name from before the recipes were merged


def test_a_file_of_your_own_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "table7-noise-digits").write_text("not the shipped spec")
    assert resolve("table7-noise-digits", "spec") == "table7-noise-digits"


def test_the_wheel_lists_every_package():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    inits = (ROOT / "src" / "ols").rglob("__init__.py")
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in inits}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.slow
def test_eval_and_demo_without_matplotlib_print_and_save_the_numbers(trained_run, tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    monkeypatch.setattr("ols.eval.plots._noticed", False)
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval.json", "*.png", "predictions.npz"))
    assert main(["eval", str(run), "--soft-labels"]) == 0
    captured = capsys.readouterr()
    assert "test top-1 error" in captured.out and captured.err.count("matplotlib is not installed") == 1
    assert captured.out.count("soft label of ") == 3 and (run / "soft_labels.npy").exists()
    result = json.loads((run / "eval.json").read_text())
    assert 0 <= result["test_top1_err"] <= 100 and "reliability" not in result["files"]
    assert not (run / "reliability.png").exists()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--seeds", "0", "--epochs", "1",
                 "--dataset", "digits"]) == 0
    assert "| OLS (alpha=0.5) |" in capsys.readouterr().out and (tmp_path / "demo" / "results.md").exists()


@pytest.mark.slow  # a subprocess, or every shipped spec parsed: several seconds
def test_list_presets_describes_each_preset_in_one_line(capsys):
    from ols.cli import main
    from ols.presets import shipped_names

    assert main(["list-presets"]) == 0
    out = capsys.readouterr().out
    presets = out.split("losses (", 1)[0].splitlines()
    lines = {line.split()[0]: line for line in presets if line.startswith("  ")}
    assert set(lines) == set(shipped_names("config")) | set(shipped_names("spec"))
    assert "OLS paper's recipe (Sec. V-A)" in lines["cifar100/paper"] and "(300 epochs, batch 128)" in \
        lines["cifar100/paper"]
    assert lines["table7-noise-fashion-mnist"].endswith("(72 runs)")  # 6 methods x 4 noise rates x 3 seeds
    assert "Fashion-MNIST" in lines["table7-noise-fashion-mnist"]


def _ols_modules():
    """``{dotted name: (path, is a package)}`` of every module under ``src/ols``."""
    src = pathlib.Path(__file__).resolve().parents[1] / "src"
    modules = {}
    for f in (src / "ols").rglob("*.py"):
        parts = list(f.relative_to(src).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (f, package)
    return modules


def test_the_package_has_no_import_cycle():
    """Every ``import`` between ols modules, module-level or inside a function, read with ast:
    the graph has no cycle (a function-level import that holds a cycle off still counts)."""
    import ast

    modules = _ols_modules()
    graph = {}
    for name, (f, package) in modules.items():
        here = name.split(".") if package else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                deps.update(found or ([target] if target in modules else []))
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        deps.discard(name)
        graph[name] = deps

    def path_back(start):  # depth-first: a path from start back to itself, if any
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    assert len(graph) > 50
    cycles = [c for c in map(path_back, sorted(graph)) if c]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])


def test_every_module_imports():
    """The doctest collection skips a module that fails to import (``--doctest-ignore-import-errors``, so that
    the adapters whose framework is an extra do not error without it); this is where such a failure shows."""
    import importlib
    import importlib.util

    needs = {"ols.integrations.lightning": "lightning", "ols.integrations.hf": "transformers"}
    names = sorted(name for name in _ols_modules() if name != "ols.__main__")
    assert len(names) > 50
    for name in names:
        if name in needs and importlib.util.find_spec(needs[name]) is None:
            continue
        importlib.import_module(name)


def test_ols_all_installs_every_extra_but_the_torch_matched_ones():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    listed = extras["all"][0].split("[", 1)[1].rstrip("]").split(",")
    assert set(listed) == set(extras) - {"all", "dev", "test", "timm", "vision"}
