"""advbench-report on fixture runs (finished, failed, unfinished), and a sweep that survives a failing job."""
import csv
import json
import subprocess
import sys

import pytest
import yaml

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
                                                      "choices": choices, "labels": labels or choices}))
    if status:
        (run / "status").write_text(status + "\n")
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


def test_a_failing_job_does_not_stop_the_sweep_but_fails_it_at_the_end(tmp_path):
    proc = advbench("-m", *TINY, "epochs=1", "eps=abc,0.1", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path,
                    check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    summary = [line for line in proc.stderr.splitlines() if "1 of 2 jobs did not finish" in line]
    assert len(summary) == 1 and "eps=abc" in summary[0]
    statuses = {next(o for o in p.parent.parent.name.split(",") if o.startswith("eps=")): p.read_text()
                for p in (tmp_path / "sweep").rglob("status")}
    assert statuses["eps=abc"].startswith("failed: eps='abc'") and statuses["eps=0.1"] == "finished\n"
    rows = write_report(tmp_path / "sweep")
    assert sorted(r["status"] for r in rows) == ["failed", "finished"]


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
