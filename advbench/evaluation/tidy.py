"""results.csv: a run's numbers in long form, one row per metric, evaluation attack and eps, with the run's settings
as columns, so that ``pandas.read_csv`` of one run (or of advbench-report's report_long.csv) needs no flattening.

Pure Python and the csv module: pandas is not needed to write it."""
import csv
import io
import math
from pathlib import Path

import yaml

from advbench.runtime.outputs import atomic_write

# The run's settings: the same on every row of a run.
SETTINGS = ("run", "advbench_version", "job", "task", "dataset", "model", "training", "attack", "eval", "eps",
            "eps_value", "seed", "setting", "n_examples")
# What each row measures.
MEASURES = ("eval_attack", "eval_eps", "eval_eps_value", "metric", "headline", "value")
COLUMNS = SETTINGS + MEASURES
LABELS = ("dataset", "model", "training", "attack")
CLEAN, WORST = "none", "worst"  # eval_attack of the clean rows, and of each example's worst case over the attacks
# Overrides that do not change what a run computes: they never split a setting.
NOT_SETTINGS = ("seed", "progress", "threads", "device", "resume", "stop_after_epoch", "dataset.root")


def setting(overrides: list) -> str:
    """The run's overrides that define its experiment, sorted: runs that differ only in seed share it."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in NOT_SETTINGS
            and not o.lstrip("+~").startswith("hydra")]
    return ",".join(sorted(keep)) or "(defaults)"


def recorded_overrides(out: Path) -> list | None:
    """The overrides the run in ``out`` recorded in .hydra/overrides.yaml (the run as first started), with those
    of its last resume (.hydra_resume/: an ``eval.*`` or ``epochs`` it changed) in their place; None if it
    recorded none."""
    first, resumed = (Path(out) / folder / "overrides.yaml" for folder in (".hydra", ".hydra_resume"))
    if not first.is_file():
        return None
    later = (yaml.safe_load(resumed.read_text()) or []) if resumed.is_file() else []
    replaced = {o.split("=", 1)[0].lstrip("+~") for o in later}
    return [o for o in yaml.safe_load(first.read_text()) or [] if o.split("=", 1)[0].lstrip("+~") not in replaced] \
        + later


def overrides(out: Path) -> list:
    """The command line's overrides of the run in ``out``: those it recorded, else Hydra's own record of this
    command line, else none."""
    recorded = recorded_overrides(out)
    if recorded is not None:
        return recorded
    from hydra.core.hydra_config import HydraConfig
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def evaluated(evaluation: dict) -> str | None:
    """The eval column: the preset, or where the task skipped its attacks (text), the attacks that ran, joined by +."""
    if evaluation.get("preset_skipped"):
        return "+".join(evaluation.get("ran") or []) or None
    return evaluation.get("preset")


def settings(results: dict, out: Path) -> dict:
    """The settings columns of the run in ``out`` whose results.json content is ``results``."""
    labels = results.get("labels") or results.get("choices") or {}
    eps = results.get("eps") or {}
    return {"run": Path(out).name, "advbench_version": (results.get("versions") or {}).get("advbench"),
            "job": results.get("job"), "task": results.get("task"), **{k: labels.get(k) for k in LABELS},
            "eval": evaluated(results.get("evaluation") or {}), "eps": eps.get("given"),
            "eps_value": eps.get("value"), "seed": results.get("seed"), "setting": setting(overrides(out))}


def _number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def rows(results: dict, settings: dict) -> list:
    """The long rows of ``results`` (results.json's content): every top-level ``clean_*`` number (eval_attack
    ``none``, eval_eps 0), every ``robust_*`` number (eval_attack ``worst``) and its ``*_by_attack`` numbers at the
    run's eps, then each other eps of the robustness curve; ``headline`` marks the run's two headline numbers."""
    base = {c: settings.get(c) for c in SETTINGS} | {"n_examples": results.get("n_examples")}
    names = results.get("metric_names") or {"clean": "clean_acc", "robust": "robust_acc"}
    headline = {(names["clean"], CLEAN): "clean", (names["robust"], WORST): "robust"}
    found = []

    def add(attack, eps, eps_value, metric, value, main=True):
        value = None if isinstance(value, float) and not math.isfinite(value) else value
        found.append(base | {"eval_attack": attack, "eval_eps": eps, "eval_eps_value": eps_value, "metric": metric,
                             "headline": headline.get((metric, attack)) if main else None, "value": value})

    for key, value in results.items():
        if key.startswith("clean_") and _number(value):
            add(CLEAN, "0", 0.0, key, value)
    eps, eps_value = settings.get("eps"), settings.get("eps_value")
    for key, value in results.items():
        if key.startswith("robust_") and _number(value):
            add(WORST, eps, eps_value, key, value)
            for name, by_attack in (results.get(f"{key}_by_attack") or {}).items():
                add(name, eps, eps_value, key, by_attack)
    attacks = list(results.get("attacks") or results.get(f"{names['robust']}_by_attack") or ())
    for point in sorted(results.get("robustness_curve") or (), key=lambda p: p.get("eps_value") or 0.0):
        if point.get("eps_value") == eps_value:  # the run's own eps: the main evaluation above, the same numbers
            continue
        add(WORST, point.get("eps"), point.get("eps_value"), names["robust"], point.get(names["robust"]), False)
        for name in (n for n in attacks if n in point):
            add(name, point.get("eps"), point.get("eps_value"), names["robust"], point[name], False)
    return found


def headline(rows: list) -> dict:
    """{"clean": value, "robust": value, "metric": the robust metric's name} of a run's long rows (strings as
    read from results.csv, or numbers); None where a run has no such row."""
    found = {r["headline"]: r for r in rows if r.get("headline")}
    values = {role: found.get(role, {}).get("value") for role in ("clean", "robust")}
    return {role: None if v in (None, "") else float(v) for role, v in values.items()} | {
        "metric": found.get("robust", {}).get("metric")}


def text(rows: list, columns=COLUMNS) -> str:
    """``rows`` as CSV text with ``columns`` (None and missing keys as empty cells)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write(path: Path, rows: list) -> None:
    """Write ``rows`` as results.csv (atomically), with the columns of COLUMNS."""
    data = text(rows).encode()
    atomic_write(path, lambda f: f.write(data))


def read(path: Path) -> list:
    """The rows of a results.csv (every cell a string, empty where missing)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
