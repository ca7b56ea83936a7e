"""Interruption and resume: SIGTERM, stop_after_epoch, equality with an uninterrupted run, finished jobs skipped."""
import json
import signal
import subprocess
import sys
import time

import torch

from helpers import TINY, advbench, cli, metrics_without_timing, one_line_error

RUN = [*TINY, "training=mixed", "attack=pgd", "attack.steps=2", "epochs=3", "seed=4"]


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    advbench(*RUN, f"hydra.run.dir={tmp_path}/whole", cwd=tmp_path)
    stopped = advbench(*RUN, "stop_after_epoch=1", f"hydra.run.dir={tmp_path}/parts", cwd=tmp_path, check=False)
    assert stopped.returncode == 3 and f"advbench resume={tmp_path}/parts" in stopped.stderr
    assert (tmp_path / "parts" / "status").read_text().startswith("interrupted: stop_after_epoch=1")
    assert len(metrics_without_timing(tmp_path / "parts")) == 1 and not (tmp_path / "parts/results.json").exists()

    advbench(f"resume={tmp_path}/parts", "progress=false", cwd=tmp_path)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert metrics_without_timing(parts) == metrics_without_timing(whole)
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, parts))
    assert (a["clean_acc"], a["robust_acc_by_attack"]) == (b["clean_acc"], b["robust_acc_by_attack"])
    sa, sb = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (whole, parts))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (parts / "status").read_text() == "finished\n" and (parts / ".hydra" / "config.yaml").exists()


def test_sigterm_stops_cleanly_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "advbench", "dataset=digits", "model=mlp", "epochs=150",
                             "schedule=constant",  # a resume may change epochs where the rate ignores the length
                             "progress=false", "threads=1", "val.attack.steps=2", "eval.n_examples=50",
                             f"hydra.run.dir={run}"], stderr=subprocess.PIPE, text=True)
    # Wait for the first epoch's files, however long the machine takes; no timer decides anything.
    while not (run / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3 and "interrupted (SIGTERM)" in stderr and "Traceback" not in stderr
    assert (run / "status").read_text().startswith("interrupted: SIGTERM")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert 1 <= epoch <= len(rows) < 150
    # Resumed for two epochs more than it wrote (a resume may set epochs to any number not below those done):
    # the 150 only made sure the signal landed mid-run, and running them all would take a minute.
    total = len(rows) + 2
    advbench(f"resume={run}", f"epochs={total}", cwd=tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, total + 1))
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == total


def test_resuming_a_finished_sweep_skips_its_jobs(tmp_path):
    sweep = [*TINY, "epochs=1", "eps=0.05,0.1", f"hydra.sweep.dir={tmp_path}/sweep"]
    advbench("-m", *sweep, cwd=tmp_path)
    results = sorted((tmp_path / "sweep").rglob("results.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    proc = advbench("-m", *sweep, "resume=auto", cwd=tmp_path)
    assert proc.stderr.count("has finished already: skipped") == 2
    assert [p.stat().st_mtime_ns for p in results] == stamps


def test_resume_of_a_directory_without_a_run_is_an_error_that_creates_nothing(tmp_path):
    code, err = cli(f"resume={tmp_path}/nothing", "progress=false", cwd=tmp_path)
    assert code == 2 and "no advbench run there" in one_line_error(err, "resume=")
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "outputs").exists()
