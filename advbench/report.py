"""``advbench-report DIR``: one table of every run below DIR (finished, failed or unfinished), with mean and std
over seeds, as report.csv, report.md and report.png (robust accuracy against eps, one line per training method)."""
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
from advbench.outputs import atomic_write

log = logging.getLogger("advbench.report")
COLUMNS = ["run", "status", "dataset", "model", "training", "attack", "eps", "seed", "clean_acc", "robust_acc",
           "wall_seconds"]
GROUP = ("dataset", "model", "training", "attack", "eps")


def read_run(run: Path, root: Path) -> dict:
    """One row: the run's combination from its Hydra config, its numbers from results.json, and its status."""
    hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    choices = hydra["runtime"]["choices"]
    row = {"run": str(run.relative_to(root)) or ".", "eps": str(config.get("eps")), "seed": config.get("seed"),
           **{k: choices.get(k) for k in ("dataset", "model", "training", "attack")}}
    status = (run / "status").read_text().strip() if (run / "status").exists() else ""
    if (run / "results.json").exists():
        results = json.loads((run / "results.json").read_text())
        row |= {k: results.get(k) for k in ("clean_acc", "robust_acc", "wall_seconds")}
        row |= {k: results["choices"].get(k, row[k]) for k in ("dataset", "model", "training", "attack")}
        row["status"] = "finished"
    else:
        row["status"] = status.split(":")[0] if status.startswith(("failed", "interrupted")) else "unfinished"
    return row


def collect(root: Path) -> list:
    """Every run directory below ``root`` (one holding .hydra/config.yaml), sorted by path."""
    runs = sorted(p.parent.parent for p in root.rglob(".hydra/config.yaml"))
    return [read_run(run, root) for run in runs]


def aggregate(rows: list) -> list:
    """Mean and std over seeds of each finished combination."""
    groups = defaultdict(list)
    for row in rows:
        if row["status"] == "finished":
            groups[tuple(row[k] for k in GROUP)].append(row)
    out = []
    for key, members in sorted(groups.items(), key=lambda kv: (kv[0][:4], parse_eps(kv[0][4]))):
        stats = {"n_seeds": len(members)}
        for metric in ("clean_acc", "robust_acc"):
            values = [m[metric] for m in members if m[metric] is not None]
            stats[f"{metric}_mean"] = statistics.fmean(values) if values else None
            stats[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(dict(zip(GROUP, key)) | stats)
    return out


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


def markdown(rows: list, groups: list) -> str:
    """report.md: mean/std per combination, every run, and the runs that did not finish."""
    def table(records, columns):
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        return lines + ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in records]
    text = ["# advbench report", "", "## Mean and std over seeds (finished runs)", ""]
    text += table(groups, [*GROUP, "n_seeds", "clean_acc_mean", "clean_acc_std", "robust_acc_mean",
                           "robust_acc_std"])
    text += ["", "## Runs", ""] + table(rows, COLUMNS)
    missing = [r for r in rows if r["status"] != "finished"]
    text += ["", "## Failed or unfinished", ""]
    text += [f"- `{r['run']}`: {r['status']}" for r in missing] or ["none"]
    return "\n".join(text) + "\n"


def plot(groups: list, path: Path) -> None:
    """report.png: robust accuracy (mean, std bars) against eps, one line per training method."""
    from advbench.plots import plt, save_figure
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = defaultdict(list)
    for g in groups:
        if g["robust_acc_mean"] is not None:
            lines[(g["training"], g["dataset"], g["model"], g["attack"])].append(g)
    several_setups = len({key[1:] for key in lines}) > 1  # then a label also names dataset, model, attack
    for (training, *setup), points in sorted(lines.items()):
        points.sort(key=lambda g: parse_eps(g["eps"]))
        ax.errorbar([parse_eps(p["eps"]) for p in points], [p["robust_acc_mean"] for p in points],
                    yerr=[p["robust_acc_std"] for p in points], marker="o", capsize=3,
                    label=f"{training} ({', '.join(setup)})" if several_setups else training)
    ax.set(xlabel="eps", ylabel="robust accuracy", ylim=(0, 1.02), title="robust accuracy vs eps")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def write_report(root: Path) -> list:
    """Gather every run below ``root`` into report.csv, report.md and report.png; return the rows."""
    if not root.is_dir():
        raise AdvbenchError(f"advbench-report: {root} is not a directory")
    rows = collect(root)
    if not rows:
        raise AdvbenchError(f"advbench-report: no run directories (with .hydra/config.yaml) below {root}")
    groups = aggregate(rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(root / "report.csv", lambda f: f.write(text.getvalue().encode()))
    atomic_write(root / "report.md", lambda f: f.write(markdown(rows, groups).encode()))
    plot(groups, root / "report.png")
    return rows


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="advbench-report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a directory holding advbench runs (outputs/, multirun/...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rows = write_report(args.dir)
    except AdvbenchError as err:
        log.error("%s", err)
        sys.exit(2)
    done = sum(r["status"] == "finished" for r in rows)
    log.info("%d runs (%d finished, %d failed or unfinished): %s", len(rows), done, len(rows) - done,
             args.dir / "report.md")


if __name__ == "__main__":
    main()
