"""Nothing lost: run directories are never shared or overwritten, and resume continues only the same experiment."""
import datetime as real_datetime
import json
import subprocess
import sys

import pytest
import torch

from advbench.runtime import rundir
from advbench.training import modes as training
from helpers import DIGITS, TINY, cli, one_line_error


class FrozenClock(real_datetime.datetime):
    """Every run starts in the same second."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 2, 3, 4, 5)


def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path, monkeypatch):
    monkeypatch.setattr("hydra.core.utils.datetime", FrozenClock)
    for _ in range(2):
        cli(*TINY, "epochs=1", cwd=tmp_path, check=True)
    (name,) = (tmp_path / "outputs").iterdir()
    runs = sorted(p.name for p in name.iterdir())
    assert runs == ["2026-01-02_03-04-05", "2026-01-02_03-04-05-2"]
    for run in runs:
        assert (name / run / "status").read_text() == "finished\n"
        assert (name / run / "advbench.log").read_text().count("files in") == 1  # no interleaved logs


def test_claim_is_atomic_and_never_returns_a_taken_directory(tmp_path):
    first, second = rundir.claim(str(tmp_path / "a")), rundir.claim(str(tmp_path / "a"))
    assert first != second and second.endswith("a-2")


def test_long_names_stay_short():
    name = rundir.short("eps=" + "1" * 400)
    assert len(name.encode()) <= 100 and name.startswith("eps=111")
    assert rundir.short("eps=" + "1" * 400) == name and rundir.short("eps=" + "1" * 399) != name


@pytest.mark.parametrize("status", ["finished", "running"])
def test_an_explicit_run_dir_holding_a_run_is_refused(tmp_path, status):
    run = tmp_path / "run"
    cli(*TINY, "epochs=1", f"hydra.run.dir={run}", cwd=tmp_path, check=True)
    (run / "status").write_text(status + "\n")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err = cli(*TINY, "epochs=1", "seed=5", f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 2 and f"resume={run}" in one_line_error(err, "already holds a run")
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}  # not one byte changed


def test_a_reused_sweep_directory_needs_resume_auto(tmp_path):
    sweep = [*TINY, "epochs=1", "eps=0.05", f"hydra.sweep.dir={tmp_path}/sweep"]
    cli("-m", *sweep, cwd=tmp_path, check=True)
    code, err = cli("-m", *sweep, cwd=tmp_path)
    assert code == 2 and "resume=auto" in one_line_error(err, "already holds runs")


def stopped(tmp_path, *extra):
    run = tmp_path / "run"
    code, _ = cli(*DIGITS, "epochs=3", "stop_after_epoch=1", *extra, f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 3
    return run


@pytest.mark.parametrize("override", ["eps=0.2", "lr=0.1", "seed=9", "attack=pgd", "dataset.val_size=50",
                                      "training=mixed", "model.hidden=64"])
def test_resume_refuses_overrides_that_change_the_experiment(tmp_path, override):
    run = stopped(tmp_path)
    code, err = cli(f"resume={run}", override, cwd=tmp_path)
    key = override.split("=")[0]
    assert code == 2 and key in one_line_error(err, "would change the experiment being resumed")
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1
    assert (run / "status").read_text().startswith("interrupted")  # the run is left resumable


def test_resume_accepts_how_long_where_and_how_it_is_evaluated(tmp_path):
    run = stopped(tmp_path, "schedule=constant")
    cli(f"resume={run}", "epochs=4", "threads=1", "progress=false", "device=cpu", "eval.n_examples=30",
        cwd=tmp_path, check=True)
    results = json.loads((run / "results.json").read_text())
    assert results["training"]["epochs_run"] == 4 and results["n_examples"] == 30
    # results.csv labels the run with what ran: the resume's eval.n_examples and epochs replace the first ones
    setting = (run / "results.csv").read_text().splitlines()[1]
    assert "epochs=4" in setting and "eval.n_examples=30" in setting and "epochs=3" not in setting


def test_resume_refuses_a_new_length_where_the_schedule_spans_the_run(tmp_path):
    # onecycle (the default) sets the rate by the share of the run done: epochs 2-4 of a 4-epoch schedule after
    # epoch 1 of a 3-epoch one would give numbers no run of the recorded config gives.
    run = stopped(tmp_path)
    code, err = cli(f"resume={run}", "epochs=4", cwd=tmp_path)
    line = one_line_error(err, "resume: epochs=4 differs from the run's 3, and schedule=onecycle")
    assert code == 2 and "resume with epochs=3" in line
    assert (run / "status").read_text().startswith("interrupted")


def test_resume_of_a_finished_run_refuses_what_would_change_it_and_skips_it_otherwise(tmp_path):
    run = tmp_path / "run"
    cli(*DIGITS, "epochs=1", f"hydra.run.dir={run}", cwd=tmp_path, check=True)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for override in ("lr=0.5", "epochs=2", "eval.n_examples=30"):
        code, err = cli(f"resume={run}", override, cwd=tmp_path)
        key = override.split("=")[0]
        assert code == 2 and f"has finished; {key} would change it" in one_line_error(err, "has finished")
    code, err = cli(f"resume={run}", *DIGITS, "epochs=1", cwd=tmp_path)  # the same command again: skipped
    assert code == 0 and "has finished already: skipped" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_needs_a_run_that_finished_an_epoch(tmp_path, monkeypatch):
    def interrupt(self, b):
        from advbench.errors import Interrupted
        raise Interrupted("SIGINT")
    monkeypatch.setattr(training.Adversarial, "step", interrupt)
    run = tmp_path / "run"
    code, err = cli(*DIGITS, f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 3 and "resume=" not in err and "nothing to resume" in err
    assert "nothing to resume" in (run / "status").read_text()
    code, err = cli(f"resume={run}", cwd=tmp_path)
    assert code == 2 and "nothing to resume" in one_line_error(err, f"resume={run}")


def test_resume_auto_outside_a_sweep_is_an_error(tmp_path):
    code, err = cli("resume=auto", cwd=tmp_path)
    assert code == 2 and "-m" in one_line_error(err, "resume=auto")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_with_a_damaged_metrics_file_is_a_one_line_error(tmp_path, damage):
    run = stopped(tmp_path, "epochs=3", "stop_after_epoch=2")
    if damage == "missing":
        (run / "metrics.jsonl").unlink()
    else:
        (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text()[:-30])
    code, err = cli(f"resume={run}", cwd=tmp_path)
    assert code == 2 and "metrics.jsonl" in one_line_error(err, "resume:")


def test_resume_of_a_finished_run_with_a_truncated_results_file(tmp_path):
    run = tmp_path / "run"
    cli(*DIGITS, "epochs=1", f"hydra.run.dir={run}", cwd=tmp_path, check=True)
    (run / "results.json").write_text((run / "results.json").read_text()[:50])
    code, err = cli(f"resume={run}", cwd=tmp_path)
    assert code == 2 and "results.json" in one_line_error(err, "unreadable")


def test_a_model_target_override_names_the_run(tmp_path):
    cli(*TINY, "epochs=1", "model=small_cnn", "model._target_=helpers.tiny_cnn", "~model.channels",
        "~model.hidden", cwd=tmp_path, check=True)
    (run,) = [p for p in (tmp_path / "outputs").rglob("results.json")]
    assert run.parent.parent.name.startswith("synthetic_tiny_cnn_adversarial_fgsm_rs_eps0.1")
    results = json.loads(run.read_text())
    assert results["labels"]["model"] == "tiny_cnn" and results["choices"]["model"] == "small_cnn"
    assert torch.load(run.parent / "model.pt", weights_only=True)["classes"] == ["0", "1", "2", "3"]


def test_a_refused_run_leaves_no_run_directory(tmp_path):
    code, err = cli(*TINY, "lr=nan", cwd=tmp_path)
    assert code == 2 and "lr=nan" in one_line_error(err, "expected a finite number")
    assert not list(tmp_path.iterdir())  # its directory gone, and the outputs/<name>/ made for it
    code, _ = cli(*TINY, "lr=nan", f"hydra.run.dir={tmp_path}/new/run", cwd=tmp_path)
    assert code == 2 and not list(tmp_path.iterdir())
    cli(*TINY, "epochs=1", cwd=tmp_path, check=True)
    (done,) = (tmp_path / "outputs").iterdir()
    code, _ = cli(*TINY, "epochs=1", "lr=nan", cwd=tmp_path)
    assert code == 2 and len(list(done.iterdir())) == 1  # the finished run and its outputs/<name>/ stay
    assert (next(done.iterdir()) / "status").read_text() == "finished\n"


def test_a_refused_run_leaves_the_users_directory_as_it_was(tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("my notes\n")
    code, err = cli(*TINY, "lr=nan", f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 2 and "lr=nan" in one_line_error(err, "expected a finite number")
    assert sorted(p.name for p in run.iterdir()) == [".advbench.lock", "notes.txt"]  # the empty lock file stays
    assert (run / "notes.txt").read_text() == "my notes\n"
    cli(*TINY, "epochs=1", f"hydra.run.dir={run}", cwd=tmp_path, check=True)  # the corrected command runs there
    assert (run / "status").read_text() == "finished\n" and (run / "notes.txt").read_text() == "my notes\n"


def test_a_refused_run_that_cannot_be_taken_back_is_marked_refused_never_failed(tmp_path, monkeypatch):
    from advbench import experiment
    from advbench.errors import AdvbenchError

    def prepare(cfg, out, *args):  # something not advbench's own appears in the directory before the refusal
        (out / "theirs.txt").write_text("not advbench's\n")
        raise AdvbenchError("model.width=0: expected a positive integer")
    monkeypatch.setattr(experiment, "prepare", prepare)
    run = tmp_path / "runs" / "run"
    code, err = cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 2 and "model.width=0" in one_line_error(err, "expected a positive integer")
    assert (run / "status").read_text() == "refused: model.width=0: expected a positive integer\n"
    assert (run / "theirs.txt").read_text() == "not advbench's\n" and (run / ".hydra").is_dir()
    proc = subprocess.run([sys.executable, "-m", "advbench.report", str(tmp_path / "runs")], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "1 runs (0 finished, 0 failed or unfinished, 1 refused before they began)" in \
        proc.stderr
    assert "run,refused," in (tmp_path / "runs" / "report.csv").read_text()
