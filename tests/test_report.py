"""advbench-report on fixture runs (finished, failed, unfinished), and a sweep that survives a failing job."""
import csv
import errno
import importlib.util
import json
import logging
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from advbench import report
from advbench.eps import parse_eps
from advbench.evaluation import tidy
from advbench.report import aggregate, collect, write_report
from helpers import TINY, advbench


def fake_run(root, name, training, eps, seed, robust=None, status=None, job="train", extra=(), labels=None,
             key="job"):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    choices = {"dataset": "digits", "model": "mlp", "training": training, "attack": "pgd"}
    overrides = [f"training={training}", f"eps={eps}", f"seed={seed}", "progress=false", *extra]
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"eps": eps, "seed": seed, key: job}))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if robust is not None:
        (run / "results.json").write_text(json.dumps({"clean_acc": 0.9, "robust_acc": robust, "wall_seconds": 1.5,
                                                      "choices": choices, "labels": labels or choices,
                                                      "task": "classification"}))
    if status:
        (run / "status").write_text(status + "\n")
    return run


def tidy_run(root, name, eps, seed, clean, robust, by_attack, curve=(), extra=()):
    """A run as this advbench writes it: results.json and results.csv (per attack, along a curve)."""
    run = fake_run(root, name, "adversarial", eps, seed, robust, "finished", extra=extra)
    results = json.loads((run / "results.json").read_text()) | {
        "job": "train", "task": "classification", "n_examples": 50, "clean_acc": clean,
        "robust_acc_by_attack": by_attack, "attacks": dict.fromkeys(by_attack, {}),
        "eps": {"given": eps, "value": parse_eps(eps)}, "seed": seed, "versions": {"advbench": "0.1.0"},
        "metric_names": {"clean": "clean_acc", "robust": "robust_acc"}, "evaluation": {"preset": "pgd20"},
        "robustness_curve": list(curve)}
    (run / "results.json").write_text(json.dumps(results))
    tidy.write(run / "results.csv", tidy.rows(results, tidy.settings(results, run)))
    return run


@pytest.fixture
def sweep(tmp_path):
    fake_run(tmp_path, "a/seed=0", "adversarial", "2/255", 0, 0.6, "finished")
    fake_run(tmp_path, "a/seed=1", "adversarial", "2/255", 1, 0.7, "finished")
    fake_run(tmp_path, "b/seed=0", "adversarial", "8/255", 0, 0.4, "finished")
    fake_run(tmp_path, "c/seed=0", "standard", "2/255", 0, 0.1)
    fake_run(tmp_path, "d/seed=0", "standard", "8/255", 0, status="failed: eps='x' is not a valid budget")
    fake_run(tmp_path, "e/seed=0", "mixed", "8/255", 0, status="running")  # killed: never finished
    return tmp_path


def test_report_lists_every_run_and_aggregates_over_seeds(sweep):
    write_report(sweep)
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [(r["run"], r["status"]) for r in rows] == [
        ("a/seed=0", "finished"), ("a/seed=1", "finished"), ("b/seed=0", "finished"), ("c/seed=0", "finished"),
        ("d/seed=0", "failed"), ("e/seed=0", "unfinished")]
    assert [r["task"] for r in rows] == ["classification"] * 4 + [""] * 2  # the problem, from results.json
    text = (sweep / "report.md").read_text()
    assert ("| train | digits | mlp | adversarial | pgd |  | 2/255 | eps=2/255,training=adversarial | 2 | "
            "90.00 ± 0.00% | 65.00 ± 7.07% |") in text
    assert "- `d/seed=0`: failed" in text and "- `e/seed=0`: unfinished" in text
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_report_never_averages_different_settings_or_tasks(tmp_path):
    for seed, weight in ((0, "0.1"), (1, "0.9")):
        fake_run(tmp_path, f"w{weight}", "mixed", "0.1", seed, 0.5 + seed / 10, "finished",
                 extra=[f"training.adv_weight={weight}"])
    # written by an older advbench, whose key for the job was ``task``
    fake_run(tmp_path, "eval", "mixed", "0.1", 0, 0.3, "finished", job="eval", extra=["checkpoint=w0.1"], key="task")
    fake_run(tmp_path, "custom", "mixed", "0.1", 0, 0.2, "finished", extra=["model._target_=my.Net"],
             labels={"dataset": "digits", "model": "Net", "training": "mixed", "attack": "pgd"})
    groups = aggregate(collect(tmp_path))
    assert sorted((g["job"], g["setting"], g["n_seeds"]) for g in groups) == [
        ("eval", "checkpoint=w0.1,eps=0.1,training=mixed", 1),
        ("train", "eps=0.1,model._target_=my.Net,training=mixed", 1),
        ("train", "eps=0.1,training.adv_weight=0.1,training=mixed", 1),
        ("train", "eps=0.1,training.adv_weight=0.9,training=mixed", 1)]
    assert {g["model"] for g in groups} == {"mlp", "Net"}  # labelled with what ran


def test_unreadable_runs_are_listed_not_fatal(sweep):
    (sweep / "a/seed=1/results.json").write_text('{"clean_acc": 0.9, "rob')
    (sweep / "b/seed=0/.hydra/hydra.yaml").write_text("")
    rows = {r["run"]: r["status"] for r in write_report(sweep)}
    assert rows["a/seed=1"] == "unreadable: results.json (JSONDecodeError)"
    assert rows["b/seed=0"].startswith("unreadable: .hydra/hydra.yaml")
    text = (sweep / "report.md").read_text()
    assert "- `a/seed=1`: unreadable: results.json" in text
    assert "| 2/255 | eps=2/255,training=adversarial | 1 |" in text  # a/seed=1 is not in the mean


def test_report_command_line(sweep, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "advbench.report", str(sweep)], capture_output=True, text=True)
    assert proc.returncode == 0 and "6 runs (4 finished, 2 failed or unfinished)" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "advbench.report", str(empty)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no run directories" in proc.stderr and "Traceback" not in proc.stderr


def test_a_refused_job_does_not_stop_the_sweep_but_fails_it_at_the_end(tmp_path):
    proc = advbench("-m", *TINY, "epochs=1", "eps=abc,0.1", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path,
                    check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    summary = [line for line in proc.stderr.splitlines() if "1 of 2 jobs did not finish" in line]
    assert len(summary) == 1 and "eps=abc" in summary[0]
    statuses = {next(o for o in p.parent.parent.name.split(",") if o.startswith("eps=")): p.read_text()
                for p in (tmp_path / "sweep").rglob("status")}
    # refused before it began (bad input), not failed: the report lists it apart from runs that broke
    assert statuses["eps=abc"].startswith("refused: eps='abc'") and statuses["eps=0.1"] == "finished\n"
    rows = write_report(tmp_path / "sweep")
    assert sorted(r["status"] for r in rows) == ["finished", "refused"]
    long = pd.read_csv(tmp_path / "sweep" / "report_long.csv")
    refused = long[long["status"] == "refused"]
    assert len(refused) == 1 and refused["value"].isna().all() and refused["eps"].item() == "abc"
    (done,) = [p for p in (tmp_path / "sweep").rglob("results.json")]
    robust = long.loc[(long["status"] == "finished") & (long["headline"] == "robust"), "value"].item()
    assert robust == pytest.approx(json.loads(done.read_text())["robust_acc"], abs=1e-12)


def test_joblib_sweep_runs_jobs_in_parallel_processes_without_oversubscribing(tmp_path):
    advbench("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "threads=null", "epochs=1",
             "eps=0.05,0.1", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").rglob("results.json"))]
    assert [r["eps"]["given"] for r in results] == ["0.05", "0.1"]
    cores = __import__("os").cpu_count()
    assert all(r["threads"] == max(1, cores // 2) for r in results)


def test_slurm_launcher_configs_compose():
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        for launcher, gpus in (("submitit_slurm", None), ("slurm_gpu", 1)):
            cfg = compose("config", overrides=[f"hydra/launcher={launcher}", "hydra.launcher.timeout_min=30",
                                               "hydra.launcher.partition=gpu"], return_hydra_config=True)
            assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
            assert (cfg.hydra.launcher.timeout_min, cfg.hydra.launcher.partition) == (30, "gpu")
            assert cfg.hydra.launcher.gpus_per_node == gpus


def test_report_plots_against_any_config_key(tmp_path):
    for lr, robust in (("0.01", 0.5), ("0.001", 0.6)):
        run = fake_run(tmp_path, f"lr{lr}", "adversarial", "0.1", 0, robust, "finished", extra=[f"lr={lr}"])
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"eps": "0.1", "seed": 0, "job": "train",
                                                                    "lr": float(lr)}))
    rows = write_report(tmp_path, by="lr")
    assert sorted(r["x"] for r in rows) == [0.001, 0.01]
    groups = aggregate(rows)
    assert len(groups) == 2 and (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    proc = subprocess.run([sys.executable, "-m", "advbench.report", str(tmp_path), "--by", "lr"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    png = (tmp_path / "report.png").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "advbench.report", str(tmp_path), "--by", "lr_typo"],
                          capture_output=True, text=True)  # no run has it: not an empty figure
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--by lr_typo: no run below {tmp_path} has a value for this config key" in proc.stderr
    assert (tmp_path / "report.png").read_bytes() == png


def test_a_directory_the_report_cannot_write_is_one_line(sweep, monkeypatch, caplog):
    def read_only(path, write):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    monkeypatch.setattr(report, "atomic_write", read_only)
    with pytest.raises(SystemExit) as stop, caplog.at_level(logging.ERROR):
        report.main([str(sweep)])
    assert stop.value.code == 1
    assert caplog.messages == [f"advbench-report: cannot write the report in {sweep} (Read-only file system)"]


def test_report_long_holds_every_run_with_its_status(sweep):
    write_report(sweep)
    df = pd.read_csv(sweep / "report_long.csv")
    assert list(df.columns) == list(report.LONG)
    assert df["value"].dtype == "float64" and df["seed"].dtype.kind == "i" and df["eps_value"].dtype == "float64"
    # runs written before results.csv existed: their results.json flattened the same way
    heads = df[df["headline"].notna()].set_index(["run", "headline"])["value"]
    assert heads.to_dict() == {("a/seed=0", "clean"): 0.9, ("a/seed=0", "robust"): 0.6, ("a/seed=1", "clean"): 0.9,
                               ("a/seed=1", "robust"): 0.7, ("b/seed=0", "clean"): 0.9, ("b/seed=0", "robust"): 0.4,
                               ("c/seed=0", "clean"): 0.9, ("c/seed=0", "robust"): 0.1}
    # failed and unfinished runs: one row each, their status and settings, no number
    rest = df[~df["status"].eq("finished")].set_index("run")
    assert rest["status"].to_dict() == {"d/seed=0": "failed", "e/seed=0": "unfinished"}
    assert rest["metric"].isna().all() and rest["value"].isna().all()
    assert rest.loc["d/seed=0", "training"] == "standard" and rest.loc["e/seed=0", "eps"] == "8/255"


def test_means_come_from_the_headline_rows_of_the_long_table(tmp_path):
    curve = [{"eps": "0.05", "eps_value": 0.05, "clean_acc": 0.9, "fgsm": 0.05, "pgd20": 0.01, "robust_acc": 0.01}]
    tidy_run(tmp_path / "sweep/2026-01-01", "eps=0.1/seed=0", "0.1", 0, 0.9, 0.5, {"fgsm": 0.7, "pgd20": 0.5}, curve)
    tidy_run(tmp_path / "sweep/2026-01-01", "eps=0.1/seed=1", "0.1", 1, 0.8, 0.3, {"fgsm": 0.6, "pgd20": 0.3}, curve)
    tidy_run(tmp_path / "outputs", "single", "2/255", 0, 0.95, 0.8, {"pgd20": 0.8})
    rows = write_report(tmp_path)
    assert {r["run"]: (r["clean_acc"], r["robust_acc"]) for r in rows} == {
        "outputs/single": (0.95, 0.8), "sweep/2026-01-01/eps=0.1/seed=0": (0.9, 0.5),
        "sweep/2026-01-01/eps=0.1/seed=1": (0.8, 0.3)}
    groups = {g["setting"]: g for g in aggregate(rows)}
    pair = groups["eps=0.1,training=adversarial"]
    assert pair["n_seeds"] == 2 and pair["eps"] == "0.1" and pair["eval"] == "pgd20"
    assert (pair["clean_acc_mean"], pair["robust_acc_mean"]) == (pytest.approx(0.85), pytest.approx(0.4))
    assert pair["robust_acc_std"] == pytest.approx(0.1414, abs=1e-4)  # per-attack and curve rows never enter
    assert groups["eps=2/255,training=adversarial"]["robust_acc_std"] == 0.0  # one seed
    df = pd.read_csv(tmp_path / "report_long.csv")
    assert len(df) == 2 * 7 + 3 and set(df["status"]) == {"finished"}
    assert set(df.loc[df["eval_eps_value"] == 0.05, "eval_attack"]) == {"fgsm", "pgd20", "worst"}
    assert df.loc[df["run"] == "outputs/single", "task"].eq("classification").all()
    text = (tmp_path / "report.md").read_text()
    assert "| pgd20 | 0.1 | eps=0.1,training=adversarial | 2 | 85.00 ± 7.07% | 40.00 ± 14.14% |" in text


def test_report_long_keeps_columns_a_newer_advbench_adds(tmp_path):
    run = tidy_run(tmp_path, "new", "0.1", 0, 0.9, 0.5, {"pgd20": 0.5})
    rows = [r | {"split": "test"} for r in tidy.read(run / "results.csv")]  # a column this version does not know
    (run / "results.csv").write_text(tidy.text(rows, [*tidy.COLUMNS, "split"]))
    write_report(tmp_path)
    df = pd.read_csv(tmp_path / "report_long.csv")
    assert list(df.columns) == [*report.LONG, "split"] and set(df["split"]) == {"test"}


def test_parquet_is_skipped_without_pyarrow_and_says_so(sweep, monkeypatch, caplog):
    monkeypatch.setattr(report, "_installed", lambda module: module != "pyarrow")  # wherever this runs
    with caplog.at_level(logging.INFO, logger="advbench.report"):
        write_report(sweep)
    assert "report_long.parquet not written: it needs pyarrow (pip install pyarrow)" in caplog.text
    assert not (sweep / "report_long.parquet").exists() and (sweep / "report_long.csv").exists()


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_parquet_holds_the_long_table(sweep):
    write_report(sweep)
    pd.testing.assert_frame_equal(pd.read_parquet(sweep / "report_long.parquet"),
                                  pd.read_csv(sweep / "report_long.csv"))


def test_without_pandas_the_tables_are_written_and_one_line_says_what_is_missing(sweep, monkeypatch, caplog):
    monkeypatch.setattr(report, "_installed", lambda module: module != "pandas")
    with caplog.at_level(logging.INFO, logger="advbench.report"):
        rows = write_report(sweep)
    lines = [r.getMessage() for r in caplog.records if "pandas" in r.getMessage()]
    assert len(lines) == 1 and "pip install pandas" in lines[0] and "report.md" in lines[0]
    assert len(rows) == 6 and not (sweep / "report.md").exists() and not (sweep / "report.png").exists()
    assert [r["robust_acc"] for r in csv.DictReader((sweep / "report.csv").open())][:3] == ["0.6", "0.7", "0.4"]
    assert (sweep / "report_long.csv").read_text().startswith(",".join(report.LONG))
