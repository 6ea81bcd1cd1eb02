"""``ols report SWEEP_DIR``: the paper's table form, and plots, from a finished (or partial) sweep.

One table per metric: rows are methods (plus any grid key other than the column and the
seed), columns the varied setting, cells ``mean ± std`` over seeds (sample std), the
best mean of each column in bold (with a single method, its best setting). Under each
table, every other method's difference from the baseline method (``report.baseline``,
default the first), paired by seed, with its 95 % t interval. Headings are the metrics'
readable names with units. Plots: test-error curves with a band of ±1 std over seeds
(``curves``), and the metric against the varied setting (``sweep``, paper Fig. 7).
"""

from __future__ import annotations

import statistics
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..eval.plots import figure_or_notice
from ..rundir import flatten, read_json, read_jsonl
from .directions import Direction, best_of, direction_words, higher_is_better, metric_header
from .runner import read_sweep
from .spec import setting_text


def run_results(run_dir: Path) -> Optional[Dict[str, Any]]:
    """``summary.json`` merged with ``eval.json`` (flattened), or ``None`` for an unfinished run."""
    if not (run_dir / "summary.json").exists():
        return None
    result = flatten(read_json(run_dir / "summary.json"))
    if (run_dir / "eval.json").exists():
        result.update(flatten(read_json(run_dir / "eval.json")))
    return result


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(sweep_dir: Path, sweep: Dict[str, Any]) -> OrderedDict[str, Dict[str, List[Tuple[Path, dict]]]]:
    """``row -> column label -> [(run dir, results)]`` over finished runs, in spec order.

    Each results mapping also holds the run's ``seed`` (for pairing runs across methods).
    """
    column = sweep["columns"]
    extra = [k for k in sweep["grid"] if k not in (column, "seed")]
    table: OrderedDict[str, Dict[str, List[Tuple[Path, dict]]]] = OrderedDict()
    for run in sweep["runs"]:
        settings = run["settings"]
        row = ", ".join([run["method"]] + [f"{k}={setting_text(settings[k])}" for k in extra])
        col = setting_text(settings[column]) if column else "all"
        results = run_results(sweep_dir / run["dir"])
        cells = table.setdefault(row, {})
        cells.setdefault(col, [])
        if results is not None:
            results["seed"] = settings.get("seed", 0)
            cells[col].append((sweep_dir / run["dir"], results))
    return table


def metric_cells(table, columns: List[str], metric: str, seeds: int,
                 direction: Direction) -> Dict[Tuple[str, str], str]:
    """``(row, column) -> "mean ± std"`` text of ``metric``, the best mean per column in bold.

    With a single method its best setting is bold instead; a cell with fewer runs than
    seeds says ``(n=...)``; a cell with no finished run is ``–``.
    """
    stats: Dict[Tuple[str, str], Tuple[float, float, int]] = {}
    for row, cells in table.items():
        for col in columns:
            values = [r[metric] for _, r in cells.get(col, []) if isinstance(r.get(metric), (int, float))]
            if values:
                stats[row, col] = (*mean_std(values), len(values))
    pick = best_of(direction)
    best = {}
    for col in columns if pick else []:
        means = [stats[row, col][0] for row in table if (row, col) in stats]
        if means:
            best[col] = pick(means)
    if len(table) == 1 and pick:  # one method: bold its best setting instead, if there is a choice
        top = pick([v[0] for v in stats.values()]) if stats and len(columns) > 1 else None
        best = {col: top for col in columns}
    # errors in percent get 2 decimals; quantities below 1 (NLL, KL, shares) get 3
    digits = 3 if stats and all(abs(v[0]) < 1 for v in stats.values()) else 2
    out = {}
    for row in table:
        for col in columns:
            if (row, col) not in stats:
                out[row, col] = "–"
                continue
            m, s, n = stats[row, col]
            if n == 1:  # one value has no spread to show
                text = f"{m:.{digits}f} (n = 1)"
            else:
                text = f"{m:.{digits}f} ± {s:.{digits}f}" + (f" (n = {n})" if n < seeds else "")
            out[row, col] = f"**{text}**" if m == best.get(col) else text
    return out


def markdown_table(rows: List[str], columns: List[str], cell: Dict[Tuple[str, str], str],
                   headers: Optional[List[str]] = None) -> str:
    """A Markdown table with a ``method`` column and one column per entry of ``columns``."""
    lines = ["| method | " + " | ".join(headers or columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {row} | " + " | ".join(cell[row, col] for col in columns) + " |" for row in rows]
    return "\n".join(lines)


def metric_table(table, columns: List[str], metric: str, seeds: int, direction: Direction) -> str:
    """A Markdown table of ``metric``: rows are methods, columns the varied setting."""
    return markdown_table(list(table), columns, metric_cells(table, columns, metric, seeds, direction))


def metrics_as_columns(table, metrics: List[str], seeds: int) -> str:
    """One table, a column per metric (each with its own best in bold), for sweeps over seeds only."""
    cell = {}
    for metric in metrics:
        per_row = metric_cells(table, ["all"], metric, seeds, higher_is_better(metric))
        cell.update({(row, metric): text for (row, _), text in per_row.items()})
    return markdown_table(list(table), metrics, cell, [metric_header(m) for m in metrics])


def row_method(sweep: Dict[str, Any], row: str) -> Tuple[str, str]:
    """``(method, the rest)`` of a row name such as ``OLS, alpha=0.3``."""
    for method in sorted(sweep["methods"], key=len, reverse=True):
        if row == method or row.startswith(method + ", "):
            return method, row[len(method):]
    return row, ""


def paired_cells(table, columns: List[str], metric: str, pairs: Dict[str, str]) -> Dict[Tuple[str, str], str]:
    """``(row, column) -> "mean [low, high]"``: ``row`` minus its baseline row ``pairs[row]``.

    Runs pair by seed; the interval is the 95 % Student t interval of the mean paired
    difference (none from one pair). ``*`` marks an interval that excludes 0.
    """
    from scipy import stats as scipy_stats  # scikit-learn's own dependency

    out = {}
    found: Dict[Tuple[str, str], List[float]] = {}
    for row, base in pairs.items():
        for col in columns:
            ours = {r["seed"]: r[metric] for _, r in table[row].get(col, []) if _is_value(r.get(metric))}
            theirs = {r["seed"]: r[metric] for _, r in table[base].get(col, []) if _is_value(r.get(metric))}
            found[row, col] = [ours[s] - theirs[s] for s in sorted(ours) if s in theirs]
    # one precision for the table, as the metric's own: 3 decimals when every value is below 1
    digits = 3 if all(abs(v) < 1 for diffs in found.values() for v in diffs) else 2
    for (row, col), diffs in found.items():
        if not diffs:
            out[row, col] = "–"
            continue
        mean, std = mean_std(diffs)
        if len(diffs) == 1:
            out[row, col] = f"{mean:+.{digits}f} (n = 1)"
            continue
        half = float(scipy_stats.t.ppf(0.975, len(diffs) - 1)) * std / len(diffs) ** 0.5
        mark = "*" if mean - half > 0 or mean + half < 0 else ""
        out[row, col] = f"{mean:+.{digits}f} [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]{mark}"
    return out


def _is_value(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def baseline_pairs(sweep: Dict[str, Any], rows: List[str]) -> Tuple[Optional[str], Dict[str, str]]:
    """The baseline method and ``row -> the baseline's row with the same other settings``."""
    methods = list(sweep["methods"])
    baseline = sweep.get("baseline") or (methods[0] if len(methods) > 1 else None)
    if baseline is None:
        return None, {}
    pairs = {}
    for row in rows:
        method, rest = row_method(sweep, row)
        if method != baseline and baseline + rest in rows:
            pairs[row] = baseline + rest
    return baseline, pairs


def paired_table(table, sweep: Dict[str, Any], columns: List[str], metric: str) -> List[str]:
    """Report lines: every method's paired difference from the baseline in ``metric``, or none."""
    baseline, pairs = baseline_pairs(sweep, list(table))
    if not pairs:
        return []
    cells = paired_cells(table, columns, metric, pairs)
    if all(text == "–" for text in cells.values()):
        return []
    head = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    body = [f"| {row} | " + " | ".join(cells[row, col] for col in columns) + " |" for row in pairs]
    return [f"Difference from {baseline}, paired by seed: mean [95 % t interval]; * where the interval "
            "excludes 0.", ""] + head + body + [""]


def _pyplot():
    from ..eval.plots import pyplot

    return pyplot()


def line_style(k: int) -> Dict[str, str]:
    """The ``k``-th row's colour and line style: ten colours, then the same ten dashed, then dotted.

    (matplotlib's cycle repeats its ten colours, so a sweep of 15 methods drew two rows alike.)
    """
    return {"color": f"C{k % 10}", "linestyle": ("-", "--", ":")[(k // 10) % 3]}


def curves_plot(table, columns: List[str], column_key: Optional[str], path: Path) -> Path:
    """Test error (and, with label noise, the error on flipped samples) per epoch, bands over seeds."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    keys = [("test_top1_err", "test top-1 error (%)")]
    noisy = any("train_err_noisy_vs_noisy" in r for cells in table.values() for runs in cells.values()
                for _, r in runs)
    if noisy:
        keys.append(("train_err_noisy_vs_noisy",
                     "train error on flipped samples,\nvs their wrong labels (%)"))
    fig, axes = plt.subplots(len(keys), len(columns), figsize=(4.2 * len(columns), 3.4 * len(keys)),
                             squeeze=False, layout="constrained", sharey="row", sharex="col")
    for j, col in enumerate(columns):
        for i, (key, ylabel) in enumerate(keys):
            ax = axes[i, j]
            drawn = False
            for k, (row, cells) in enumerate(table.items()):
                runs = cells.get(col, [])
                curves = [[m.get(key, np.nan) for m in read_jsonl(d / "metrics.jsonl")] for d, _ in runs]
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                arr = np.array([c[:length] for c in curves], dtype=float)
                epochs = np.arange(1, length + 1)
                mean, std = arr.mean(0), arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(length)
                drawn = drawn or bool(np.isfinite(mean).any())
                style = line_style(k)
                ax.plot(epochs, mean, label=row, **style)
                ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=style["color"])
            if not drawn:
                ax.text(0.5, 0.5, "no flipped samples", transform=ax.transAxes, ha="center", color="gray")
            ax.set(xlabel="epoch", ylabel=ylabel if j == 0 else None,
                   title=(f"{column_key} = {col}" if column_key else None) if i == 0 else None)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("lines: mean over seeds; shaded bands: ±1 std over seeds", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_plot(table, columns: List[str], column_key: str, metric: str, path: Path, title: str) -> Path:
    """``metric`` (mean ± std over seeds) against the varied setting, one line per row (Fig. 7)."""
    if len(columns) == 1:  # one setting: no axis to draw along; a point per method instead
        return _method_points(table, columns[0], column_key, metric, path, title)
    plt = _pyplot()
    numeric = all(_is_number(c) for c in columns)
    xs = [float(c) for c in columns] if numeric else list(range(len(columns)))
    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    for row, cells in table.items():
        pts = [(x, mean_std([r[metric] for _, r in cells.get(c, [])])) for x, c in zip(xs, columns)
               if cells.get(c)]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts],
                        marker="o", capsize=3, label=row)
    if not numeric:
        ax.set_xticks(xs, columns)
    ax.set(xlabel=column_key, ylabel=f"{metric_header(metric)}\nmean, error bars ±1 std over seeds")
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _method_points(table, column: str, column_key: str, metric: str, path: Path, title: str) -> Path:
    """``metric`` (mean ± std over seeds) of each method at the sweep's one setting, side by side."""
    plt = _pyplot()
    rows = [(row, mean_std([r[metric] for _, r in cells[column]])) for row, cells in table.items()
            if cells.get(column)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 4), layout="constrained")
    for x, (_, (mean, std)) in enumerate(rows):
        ax.errorbar([x], [mean], yerr=[std], marker="o", capsize=4)
    ax.set_xticks(range(len(rows)), [row for row, _ in rows], rotation=30, ha="right", fontsize=8)
    ax.set(xlabel=f"method ({column_key} = {column})",
           ylabel=f"{metric_header(metric)}\nmean, error bars ±1 std over seeds")
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def make_report(sweep_dir: str) -> Path:
    """Write ``SWEEP_DIR/report.md`` (and its PNGs); return its path."""
    root = Path(sweep_dir)
    sweep = read_sweep(sweep_dir)
    table = collect(root, sweep)
    finished = sum(len(runs) for cells in table.values() for runs in cells.values())
    if finished == 0:
        raise ValueError(f"{sweep_dir}: no run of this sweep has finished yet (no summary.json); "
                         "run or resume it with `ols sweep SPEC.yaml`")
    column = sweep["columns"]
    columns = [setting_text(v) for v in sweep["grid"][column]] if column else ["all"]
    seeds = len(sweep["grid"].get("seed", [0]))
    lines = [f"# {sweep['title']}", ""]
    if sweep.get("overrides"):  # the spec's description may no longer hold: say what changed instead
        changes = "; ".join(f"`{o}`" for o in sweep["overrides"])
        lines += [f"Changed from the spec on the command line: {changes}"
                  + ". The spec's description is left out, as it may describe the unchanged sweep.", ""]
    elif sweep.get("description"):
        lines += [sweep["description"], ""]
    lines += temperature_notes(table)
    bold = "the best setting" if len(table) == 1 and column else "the best mean of each column"
    lines += [f"{finished} of {len(sweep['runs'])} runs finished. Cells: mean ± std over {seeds} seed(s); "
              f"{bold} in bold" + (f"; columns: `{column}`." if column else "."), ""]
    if column is None:  # nothing varies but the seed: one table, a column per metric
        lines += [metrics_as_columns(table, sweep["metrics"], seeds), ""]
        for metric in sweep["metrics"]:
            part = paired_table(table, sweep, columns, metric)
            lines += [f"### {metric_header(metric)}", ""] + part if part else []
    for metric in sweep["metrics"] if column else []:
        direction = higher_is_better(metric)
        lines += [f"## {metric_header(metric)}: `{metric}` ({direction_words(direction)})", "",
                  metric_table(table, columns, metric, seeds, direction), ""]
        lines += paired_table(table, sweep, columns, metric)
    for plot in sweep["plots"]:  # without matplotlib: one notice, and the tables above stay complete
        if plot == "curves":
            path = figure_or_notice(curves_plot, table, columns, column, root / "curves.png")
        else:
            path = figure_or_notice(sweep_plot, table, columns, column or "setting", sweep["metrics"][0],
                                    root / "sweep.png", sweep["title"])
        if path is not None:
            lines += [f"![{plot}]({path.name})", ""]
    out = root / "report.md"
    out.write_text("\n".join(lines))
    write_html(out)
    return out


def temperature_notes(table) -> List[str]:
    """A line on what temperature scaling was fitted on, where it was fitted on noisy labels."""
    fitted = {r.get("temperature_fitted_on", "") for cells in table.values() for runs in cells.values()
              for _, r in runs if r.get("temperature_fitted_on")}
    noisy = sorted(f for f in fitted if "noise" in f)
    if not noisy:
        return []
    return [f"Temperature scaling (the columns after T) was fitted on {noisy[0]}: T then fits the label "
            "noise as well, so ECE after T is not the calibration a clean held-out set would give (train "
            "with --meta-size N for one).", ""]


#: the metrics an ad-hoc report shows, those present in every run's results
RUN_METRICS = ("test_top1_err", "best_test_top1_err", "test_ece", "test_ece_ts", "test_nll",
               "train_err_noisy_vs_noisy", "label_correction_acc")


def make_runs_report(run_dirs: Sequence[str], out: str) -> Path:
    """``OUT/report.md`` (and ``report.html``, ``curves.png``) comparing finished runs side by side.

    One row per run (its folder name, its loss), a column per metric every run has, each run's
    settings that differ from the others', and their test-error curves.
    """
    runs = []
    for d in run_dirs:
        path = Path(d)
        results = run_results(path)
        if results is None:
            raise ValueError(f"{d}: not a finished run (no summary.json); a sweep folder is reported on its "
                             "own: ols report SWEEP_DIR")
        config = read_json(path / "config.json") if (path / "config.json").exists() else {}
        runs.append((path, results, flatten(config)))
    names = [p.name if [q.name for q, _, _ in runs].count(p.name) == 1 else str(p) for p, _, _ in runs]
    metrics = [m for m in RUN_METRICS if all(isinstance(r.get(m), (int, float)) for _, r, _ in runs)]
    differ = sorted(k for k in set().union(*(c for _, _, c in runs))
                    if k != "out" and len({str(c.get(k)) for _, _, c in runs}) > 1)
    cells = {}
    for name, (_, results, config) in zip(names, runs):
        for m in metrics:
            cells[name, m] = f"{results[m]:.2f}"
        for k in differ:
            cells[name, k] = f"`{config.get(k)}`"
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"# {len(runs)} runs side by side", "",
             "One value per run (a run is one seed: no spread to show). Settings in which the runs differ:",
             ", ".join(f"`{k}`" for k in differ) or "none", "",
             markdown_table(names, metrics + differ, cells, [metric_header(m) for m in metrics] + differ), ""]
    lines += temperature_notes({n: {"all": [(p, r)]} for n, (p, r, _) in zip(names, runs)})
    curves = {n: {"all": [(p, r)]} for n, (p, r, _) in zip(names, runs)}
    path = figure_or_notice(curves_plot, curves, ["all"], None, root / "curves.png")
    if path is not None:
        lines += [f"![curves]({path.name})", ""]
    report = root / "report.md"
    report.write_text("\n".join(lines))
    write_html(report)
    return report


def write_html(markdown: Path) -> Path:
    """``report.html`` beside ``markdown``: the same report as one self-contained page, figures embedded.

    Converts what the reports write: headings, paragraphs, tables, bold, code and images (as
    base64 data, so the page can be mailed or opened anywhere).
    """
    import base64
    import html
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    body, rows = [], []
    for line in markdown.read_text().splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
            continue
        if rows:
            head, *rest = rows
            body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>"
                                  for r in rest)
                        + "</table>")
            rows = []
        image = re.fullmatch(r"!\[(.*?)\]\((.+?)\)", line.strip())
        heading = re.match(r"(#+) (.*)", line)
        if image and (markdown.parent / image.group(2)).is_file():
            data = base64.b64encode((markdown.parent / image.group(2)).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}">')
        elif heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    out = markdown.with_suffix(".html")
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{markdown.parent.name}</title>"
                   f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return out
