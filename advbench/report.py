"""``advbench-report DIR [--by KEY]``: every run below DIR (finished, failed or unfinished) in one long table,
report_long.csv (each run's results.csv with its status; report_long.parquet too where pyarrow is installed), one
row per run as report.csv, and from the long table, with pandas, the mean and std over seeds of each setting as
report.md (percentages, clean and robust side by side, the evaluation preset) and report.png (robust accuracy
against eps, or against any config key with --by, one line per setting)."""
import argparse
import csv
import importlib.util
import io
import json
import logging
import sys
from pathlib import Path

import yaml

from advbench.eps import parse_eps
from advbench.errors import AdvbenchError
from advbench.evaluation import tidy
from advbench.runtime.outputs import atomic_write

log = logging.getLogger("advbench.report")
COLUMNS = ["run", "status", "job", "dataset", "model", "training", "attack", "eval", "eps", "seed", "setting",
           "clean_acc", "robust_acc", "metric", "wall_seconds"]
LONG = ("run", "status", *(c for c in tidy.COLUMNS if c != "run"))  # report_long's columns (then any newer ones)
LABELS = tidy.LABELS
# The setting columns a mean is taken over (every one but the seed; task and advbench version follow from them).
GROUP = ("job", *LABELS, "eval", "eps", "setting")
TEXT = ("run", "status", *GROUP, "task", "advbench_version", "eval_attack", "eval_eps", "metric", "headline")
SHOWN = ("run", "status", "job", *LABELS, "eval", "eps", "seed", "setting", "clean_acc", "robust_acc")
PANDAS = ("report.md and report.png (means over seeds, the figure) need pandas: pip install pandas (or "
          "pip install 'advbench[report]')")


def _load(path: Path, reader):
    text = path.read_text()
    value = reader(text)
    if value is None or not text.strip():
        raise ValueError(f"{path.name} is empty")
    return value


def _lookup(config: dict, key: str):
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _eps_value(eps):
    try:
        return parse_eps(eps)
    except AdvbenchError:
        return None


def _long(run: Path, row: dict, results: dict) -> list:
    """The run's long rows: its results.csv, or for a run written before results.csv existed, its results.json
    flattened the same way (its settings from the Hydra files)."""
    if (run / "results.csv").exists():
        return tidy.read(run / "results.csv")
    settings = {k: row.get(k) for k in tidy.SETTINGS} | {
        "advbench_version": (results.get("versions") or {}).get("advbench")}
    return tidy.rows(results, settings)


def read_run(run: Path, root: Path, by: str = "eps") -> dict:
    """One row: what ran (labels, setting) from the run's Hydra files and results.json, its status, and its long
    rows (``long``); a run whose files cannot be read gets status ``unreadable: <file>`` and is left out of every
    mean."""
    row = {"run": str(run.relative_to(root)) or "."}
    current = None
    try:
        current = ".hydra/hydra.yaml"
        choices = _load(run / ".hydra" / "hydra.yaml", yaml.safe_load)["hydra"]["runtime"]["choices"]
        current = ".hydra/config.yaml"
        config = _load(run / ".hydra" / "config.yaml", yaml.safe_load)
        current = ".hydra/overrides.yaml"
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or [] if (
            run / ".hydra" / "overrides.yaml").exists() else []
        row |= {"job": config.get("job", config.get("task", "train")),  # task: an older advbench
                "eps": str(config.get("eps")), "eps_value": _eps_value(str(config.get("eps"))),
                "seed": config.get("seed"), "setting": tidy.setting(overrides),
                **{k: choices.get(k) for k in LABELS}, "eval": choices.get("eval"), "x": _lookup(config, by)}
        current = "results.json"
        if (run / "results.json").exists():
            results = _load(run / "results.json", json.loads)
            row |= {k: (results.get("labels") or results.get("choices") or {}).get(k, row[k]) for k in LABELS}
            current = "results.csv"
            row["long"] = _long(run, row, results)
            found = tidy.headline(row["long"])
            row |= {"clean_acc": found["clean"], "robust_acc": found["robust"], "metric": found["metric"],
                    "wall_seconds": results.get("wall_seconds")}
            row["status"] = "finished"
            return row
    except (OSError, ValueError, KeyError, TypeError, AttributeError, csv.Error, yaml.YAMLError) as err:
        return {k: v for k, v in row.items() if k != "long"} | {
            "status": f"unreadable: {current} ({type(err).__name__})"}
    status = (run / "status").read_text().strip() if (run / "status").exists() else ""
    row["status"] = status.split(":")[0] if status.startswith(("failed", "interrupted")) else "unfinished"
    return row


def collect(root: Path, by: str = "eps") -> list:
    """Every run directory below ``root`` (one holding .hydra/), sorted by path; ``x`` is each run's ``by``."""
    runs = sorted({p.parent for p in root.rglob(".hydra") if p.is_dir()})
    return [read_run(run, root, by) for run in runs]


def long_table(rows: list) -> str:
    """report_long.csv's text: every run's long rows with its status (the run as its path below the report's
    directory); a run without any (failed, unfinished, unreadable) as one row of its settings and status."""
    found, seen = [], {}
    for row in rows:
        long = row.get("long") or ()
        seen |= dict.fromkeys(k for r in long for k in r)
        found += [r | {"run": row["run"], "status": row["status"]} for r in long] or [row]
    return tidy.text(found, [*LONG, *(k for k in seen if k not in LONG)])  # a newer advbench's columns kept


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def frame(rows: list):
    """The long table of ``rows`` as a pandas DataFrame, as pandas.read_csv reads report_long.csv, the text
    columns kept as text (eps 0.10 stays 0.10)."""
    import pandas as pd
    return pd.read_csv(io.StringIO(long_table(rows)), dtype={c: str for c in TEXT})


def aggregate(rows: list) -> list:
    """Mean and std over seeds of each finished setting, from the long table with pandas: the runs' headline
    rows grouped by every setting column but the seed, so different settings are never averaged together."""
    df = frame(rows)
    df["x"] = df["run"].map({r["run"]: r.get("x") for r in rows})
    done = df[df["status"] == "finished"]
    heads = done[done["headline"].notna()]  # each run's clean and robust headline numbers
    values = heads.pivot_table(index="run", columns="headline", values="value", aggfunc="first")
    runs = done.drop_duplicates("run")[["run", *GROUP, "x"]].merge(
        values.reindex(columns=["clean", "robust"]), left_on="run", right_index=True, how="left")
    stats = runs.groupby(list(GROUP), dropna=False, sort=False).agg(
        n_seeds=("run", "size"), x=("x", "first"), clean_acc_mean=("clean", "mean"), clean_acc_std=("clean", "std"),
        robust_acc_mean=("robust", "mean"), robust_acc_std=("robust", "std")).reset_index()
    stats[["clean_acc_std", "robust_acc_std"]] = stats[["clean_acc_std", "robust_acc_std"]].fillna(0.0)
    records = stats.astype(object).where(stats.notna(), None).to_dict("records")
    return sorted(records, key=lambda g: (g["job"], _eps_key(g), g["setting"]))


def _eps_key(row) -> float:
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


def _pct(value, std=None) -> str:
    if value is None:
        return ""
    return f"{100 * value:.2f}%" if std is None else f"{100 * value:.2f} ± {100 * std:.2f}%"


def markdown(rows: list, groups: list) -> str:
    """report.md: mean ± std per combination (percentages), every run, and the runs that did not finish."""
    def table(records, columns, cell):
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        return lines + ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in records]

    def mean_cell(g, column):
        if column in ("clean", "robust"):
            return _pct(g[f"{column}_acc_mean"], g[f"{column}_acc_std"])
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


def plot(groups: list, path: Path, by: str = "eps") -> None:
    """report.png: robust accuracy (mean, std bars) against ``by`` (eps by default), one line per setting; the
    y-axis fits the data."""
    import pandas as pd

    from advbench.evaluation.plots import plt, save_figure
    fig, ax = plt.subplots(figsize=(6, 4))
    df = pd.DataFrame(groups, columns=[*GROUP, "x", "robust_acc_mean", "robust_acc_std"])
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
    if len(df):
        low = (100 * (df["robust_acc_mean"] - df["robust_acc_std"])).min()
        high = (100 * (df["robust_acc_mean"] + df["robust_acc_std"])).max()
        pad = max(2.0, 0.1 * (high - low))
        ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))
        ax.legend(fontsize=8)
    ax.set(xlabel=by, ylabel="robust accuracy (%)", title=f"robust accuracy vs {by}")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _parquet(root: Path, rows: list) -> bool:
    """report_long.parquet where pyarrow is installed (the table as pandas.read_csv reads report_long.csv)."""
    if not _installed("pyarrow"):
        log.info("report_long.parquet not written: it needs pyarrow (pip install pyarrow)")
        return False
    import pandas as pd
    df = pd.read_csv(io.StringIO(long_table(rows)))
    atomic_write(root / "report_long.parquet", lambda f: df.to_parquet(f, index=False))
    return True


def write_report(root: Path, by: str = "eps") -> list:
    """Gather every run below ``root`` into report_long.csv (and .parquet), report.csv, and with pandas report.md
    and report.png (against ``by``); return the rows (one per run)."""
    if not root.is_dir():
        raise AdvbenchError(f"advbench-report: {root} is not a directory")
    rows = collect(root, by)
    if not rows:
        raise AdvbenchError(f"advbench-report: no run directories (with .hydra/) below {root}")
    long = long_table(rows).encode()
    atomic_write(root / "report_long.csv", lambda f: f.write(long))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(root / "report.csv", lambda f: f.write(text.getvalue().encode()))
    if not _installed("pandas"):
        log.warning("%s (report.csv and report_long.csv are written)", PANDAS)
        return rows
    _parquet(root, rows)
    groups = aggregate(rows)
    atomic_write(root / "report.md", lambda f: f.write(markdown(rows, groups).encode()))
    plot(groups, root / "report.png", by)
    return rows


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="advbench-report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a directory holding advbench runs (outputs/, multirun/...)")
    parser.add_argument("--by", default="eps", help="the plot's x-axis: any config key (eps, lr, "
                        "training.adv_weight...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rows = write_report(args.dir, args.by)
    except AdvbenchError as err:
        log.error("%s", err)
        sys.exit(2)
    done = sum(r["status"] == "finished" for r in rows)
    log.info("%d runs (%d finished, %d failed or unfinished): %s", len(rows), done, len(rows) - done,
             args.dir / ("report.md" if _installed("pandas") else "report_long.csv"))


if __name__ == "__main__":
    main()
