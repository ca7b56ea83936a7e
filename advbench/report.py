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
from advbench.report_views import GROUP, eps_key, markdown, plot
from advbench.runtime.outputs import atomic_write

log = logging.getLogger("advbench.report")
COLUMNS = ["run", "status", "job", "task", "dataset", "model", "training", "attack", "eval", "eps", "seed", "setting",
           "clean_acc", "robust_acc", "metric", "wall_seconds"]
LONG = ("run", "status", *(c for c in tidy.COLUMNS if c != "run"))  # report_long's columns (then any newer ones)
LABELS = tidy.LABELS
TEXT = ("run", "status", *GROUP, "task", "advbench_version", "eval_attack", "eval_eps", "metric", "headline")
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
        overrides = tidy.recorded_overrides(run) or []  # never this process's: the report reads other runs
        row |= {"job": config.get("job", config.get("task", "train")),  # task: an older advbench
                "eps": str(config.get("eps")), "eps_value": _eps_value(str(config.get("eps"))),
                "seed": config.get("seed"), "setting": tidy.setting(overrides),
                **{k: choices.get(k) for k in LABELS}, "eval": choices.get("eval"), "x": _lookup(config, by)}
        current = "results.json"
        if (run / "results.json").exists():
            results = _load(run / "results.json", json.loads)
            row |= {k: (results.get("labels") or results.get("choices") or {}).get(k, row[k]) for k in LABELS}
            row["task"] = results.get("task")  # the problem: classification, detection, ...
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
    # refused: a command advbench refused before the run began (where it could not take its files back)
    row["status"] = status.split(":")[0] if status.startswith(("failed", "interrupted", "refused")) else "unfinished"
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
    return sorted(records, key=lambda g: (g["job"], eps_key(g), g["setting"]))


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
    if all(row.get("x") is None for row in rows):  # a misspelt key would plot an empty figure
        raise AdvbenchError(f"--by {by}: no run below {root} has a value for this config key; give a key of "
                            "their .hydra/config.yaml (eps, lr, training.adv_weight...)")
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
    plot(groups, root / "report.png", by, rows)
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
    except OSError as err:  # a read-only or full disk: the tables already there are left as they were
        log.error("advbench-report: cannot write the report in %s (%s)", args.dir, err.strerror or err)
        sys.exit(1)
    done, refused = (sum(r["status"] == s for r in rows) for s in ("finished", "refused"))
    apart = f", {refused} refused before they began" if refused else ""  # never counted as failed
    log.info("%d runs (%d finished, %d failed or unfinished%s): %s", len(rows), done, len(rows) - done - refused,
             apart, args.dir / ("report.md" if _installed("pandas") else "report_long.csv"))


if __name__ == "__main__":
    main()
