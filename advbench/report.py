"""``advbench-report DIR [--by KEY]``: one table of every run below DIR (finished, failed or unfinished), with mean
and std over seeds, as report.csv, report.md (percentages, clean and robust side by side, the evaluation preset)
and report.png (robust accuracy against eps, or against any config key with --by, one line per setting)."""
import argparse
import csv
import io
import json
import logging
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from advbench.eps import parse_eps
from advbench.errors import AdvbenchError
from advbench.runtime.outputs import atomic_write

log = logging.getLogger("advbench.report")
COLUMNS = ["run", "status", "job", "dataset", "model", "training", "attack", "eval", "eps", "seed", "setting",
           "clean_acc", "robust_acc", "metric", "wall_seconds"]
# Overrides that do not change what a run computes: they never split a group.
NOT_SETTINGS = ("seed", "progress", "threads", "device", "resume", "stop_after_epoch", "dataset.root")
LABELS = ("dataset", "model", "training", "attack")
SHOWN = ("run", "status", "job", *LABELS, "eval", "eps", "seed", "setting", "clean_acc", "robust_acc")


def _setting(overrides: list) -> str:
    """The run's overrides that define its experiment, sorted: runs that differ only in seed share it."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in NOT_SETTINGS
            and not o.lstrip("+~").startswith("hydra")]
    return ",".join(sorted(keep)) or "(defaults)"


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


def read_run(run: Path, root: Path, by: str = "eps") -> dict:
    """One row: what ran (labels, setting) from the run's Hydra files and results.json, and its status; a run
    whose files cannot be read gets status ``unreadable: <file>`` and is left out of every mean."""
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
                "eps": str(config.get("eps")), "seed": config.get("seed"),
                "setting": _setting(overrides), **{k: choices.get(k) for k in LABELS}, "eval": choices.get("eval"),
                "x": _lookup(config, by)}
        current = "results.json"
        if (run / "results.json").exists():
            results = _load(run / "results.json", json.loads)
            names = results.get("metric_names") or {"clean": "clean_acc", "robust": "robust_acc"}
            row |= {"clean_acc": results.get(names["clean"]), "robust_acc": results.get(names["robust"]),
                    "metric": names["robust"], "wall_seconds": results.get("wall_seconds")}
            row |= {k: (results.get("labels") or results.get("choices") or {}).get(k, row[k]) for k in LABELS}
            row["status"] = "finished"
            return row
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as err:
        return row | {"status": f"unreadable: {current} ({type(err).__name__})"}
    status = (run / "status").read_text().strip() if (run / "status").exists() else ""
    row["status"] = status.split(":")[0] if status.startswith(("failed", "interrupted")) else "unfinished"
    return row


def collect(root: Path, by: str = "eps") -> list:
    """Every run directory below ``root`` (one holding .hydra/), sorted by path; ``x`` is each run's ``by``."""
    runs = sorted({p.parent for p in root.rglob(".hydra") if p.is_dir()})
    return [read_run(run, root, by) for run in runs]


def aggregate(rows: list) -> list:
    """Mean and std over seeds of each finished setting: runs are grouped by task and every override except the
    seed, so different settings are never averaged together."""
    groups = defaultdict(list)
    for row in rows:
        if row["status"] == "finished":
            groups[(row["job"], row["setting"])].append(row)
    out = []
    for (job, setting), members in sorted(groups.items(), key=lambda kv: (kv[0][0], _eps_key(kv[1][0]),
                                                                         kv[0][1])):
        first = members[0]
        stats = {"job": job, **{k: first[k] for k in LABELS}, "eval": first.get("eval"), "eps": first["eps"],
                 "setting": setting, "n_seeds": len(members), "x": first.get("x")}
        for metric in ("clean_acc", "robust_acc"):
            values = [m[metric] for m in members if m[metric] is not None]
            stats[f"{metric}_mean"] = statistics.fmean(values) if values else None
            stats[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(stats)
    return out


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
    from advbench.evaluation.plots import plt, save_figure
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = defaultdict(list)
    for g in groups:
        if g["robust_acc_mean"] is not None and g["job"] == "train" and _x(g) == _x(g):
            # one line per setting apart from the x key: points of a line differ in it alone
            rest = ",".join(o for o in g["setting"].split(",") if not o.lstrip("+~").startswith(f"{by}="))
            lines[(g["training"], g["dataset"], g["model"], g["attack"], rest)].append(g)
    several_setups = len({key[1:] for key in lines}) > 1  # then a label also names the rest of the setting
    values = []
    for (training, *setup), points in sorted(lines.items()):
        points.sort(key=_x)
        ys = [100 * p["robust_acc_mean"] for p in points]
        errs = [100 * p["robust_acc_std"] for p in points]
        values += [y - e for y, e in zip(ys, errs)] + [y + e for y, e in zip(ys, errs)]
        ax.errorbar([_x(p) for p in points], ys, yerr=errs, marker="o", capsize=3,
                    label=f"{training} ({', '.join(x for x in setup if x)})" if several_setups else training)
    if values:
        low, high = min(values), max(values)
        pad = max(2.0, 0.1 * (high - low))
        ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))
        ax.legend(fontsize=8)
    ax.set(xlabel=by, ylabel="robust accuracy (%)", title=f"robust accuracy vs {by}")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def write_report(root: Path, by: str = "eps") -> list:
    """Gather every run below ``root`` into report.csv, report.md and report.png (against ``by``); return the
    rows."""
    if not root.is_dir():
        raise AdvbenchError(f"advbench-report: {root} is not a directory")
    rows = collect(root, by)
    if not rows:
        raise AdvbenchError(f"advbench-report: no run directories (with .hydra/) below {root}")
    groups = aggregate(rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(root / "report.csv", lambda f: f.write(text.getvalue().encode()))
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
             args.dir / "report.md")


if __name__ == "__main__":
    main()
