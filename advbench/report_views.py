"""What ``advbench-report`` draws from the grouped table: report.md (percentages, mean ± std) and report.png."""
from pathlib import Path

from advbench.eps import parse_eps
from advbench.errors import AdvbenchError
from advbench.evaluation.tidy import LABELS

SHOWN = ("run", "status", "job", *LABELS, "eval", "eps", "seed", "setting", "clean_acc", "robust_acc")
GROUP = ("job", *LABELS, "eval", "eps", "setting")  # a mean is over every setting column but the seed


def eps_key(row) -> float:
    """A row's eps as a number for sorting (an unparsable one last)."""
    try:
        return parse_eps(row["eps"])
    except AdvbenchError:
        return float("inf")


def _x(row) -> float:
    """The plot's x of a group: its ``by`` value as a number (a fraction such as 8/255 too)."""
    try:
        return parse_eps(str(row["x"]))
    except (AdvbenchError, KeyError):
        return float("nan")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


def _pct(value, std=None, n: int | None = None) -> str:
    """A percentage; with ``std``, mean ± std over ``n`` seeds, but one seed has no spread: ``40.00% (n=1)``."""
    if value is None:
        return ""
    if n == 1:
        return f"{100 * value:.2f}% (n=1)"
    return f"{100 * value:.2f}%" if std is None else f"{100 * value:.2f} ± {100 * std:.2f}%"


def markdown(rows: list, groups: list) -> str:
    """report.md: mean ± std per combination (percentages), every run, and the runs that did not finish."""
    def table(records, columns, cell):
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        return lines + ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in records]

    def mean_cell(g, column):
        if column in ("clean", "robust"):
            return _pct(g[f"{column}_acc_mean"], g[f"{column}_acc_std"], g.get("n_seeds"))
        return _fmt(g.get("n_seeds" if column == "seeds" else column))

    def run_cell(r, column):
        return _pct(r.get(column)) if column in ("clean_acc", "robust_acc") else _fmt(r.get(column))
    text = ["# advbench report", "", "## Mean ± std over seeds (finished runs, grouped by every override but the "
            "seed)", ""]
    text += table(groups, ["job", *LABELS, "eval", "eps", "setting", "seeds", "clean", "robust"], mean_cell)
    text += ["", "## Runs", ""] + table(rows, list(SHOWN), run_cell)
    missing = [r for r in rows if r["status"] != "finished"]
    text += ["", "## Failed, unfinished or unreadable", ""]
    text += [f"- `{r['run']}`: {r['status']}" for r in missing] or ["none"]
    return "\n".join(text) + "\n"


def _metric(rows) -> str:
    """The robust metric the finished runs report (robust_acc, robust_map50...); robust_acc if none or several."""
    found = {r.get("metric") for r in rows or () if r.get("status") == "finished" and r.get("metric")}
    return found.pop() if len(found) == 1 else "robust_acc"


def plot(groups: list, path: Path, by: str = "eps", rows: list | None = None) -> None:
    """report.png: the robust metric (mean, std bars over seeds) against ``by`` (eps by default), one line per
    setting; named after ``rows``' metric; a log x axis where ``by`` spans decades (lr); the y-axis fits the data."""
    import pandas as pd

    from advbench.evaluation.plots import figure, legend_below, save_figure, sweep_axis
    from advbench.runtime.readable import label
    fig, ax = figure(figsize=(6.5, 4.6))
    df = pd.DataFrame(groups, columns=[*GROUP, "x", "robust_acc_mean", "robust_acc_std"])
    df["given"] = df["x"].astype(str)  # the tick labels: values as the runs gave them (8/255)
    df["x"] = [_x(g) for g in df.to_dict("records")]
    df = df[df["robust_acc_mean"].notna() & (df["job"] == "train") & df["x"].notna()].copy()
    # one line per setting apart from the x key: points of a line differ in it alone
    df["rest"] = df["setting"].map(lambda s: ",".join(o for o in s.split(",")
                                                      if not o.lstrip("+~").startswith(f"{by}=")))
    df[[*LABELS, "rest"]] = df[[*LABELS, "rest"]].astype(object).fillna("")
    lines = df.groupby(["training", "dataset", "model", "attack", "rest"], sort=True)
    several_setups = len({key[1:] for key in lines.groups}) > 1  # then a label also names the rest of the setting
    for (training, *setup), points in lines:
        points = points.sort_values("x")
        ax.errorbar(points["x"], 100 * points["robust_acc_mean"], yerr=100 * points["robust_acc_std"], marker="o",
                    capsize=3, label=f"{training} ({', '.join(x for x in setup if x)})" if several_setups else training)
    metric = _metric(rows)
    ax.set(xlabel=by, ylabel=label(metric), title=f"{label(metric, percent=False)} against {by} (mean ± std over "
                                                   "seeds)")
    ax.grid(alpha=0.3)
    if len(df):
        low = (100 * (df["robust_acc_mean"] - df["robust_acc_std"])).min()
        high = (100 * (df["robust_acc_mean"] + df["robust_acc_std"])).max()
        pad = max(2.0, 0.1 * (high - low))
        ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))
        legend_below(fig, ax, ncol=2)
        sweep_axis(ax, df["x"].tolist(), df["given"].tolist())
    save_figure(fig, path)
