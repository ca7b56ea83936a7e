"""One writer per run directory: a run (a resume, a sweep, a sweep's job) holds its directory's lock for its whole
life, claimed before anything is written; a command refused there leaves the directory exactly as it was."""
import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from advbench.runtime import lock
from helpers import DIGITS, TINY, cli, one_line_error

HOLD = ("import sys\n"
        "from advbench.runtime.lock import hold\n"
        "hold(sys.argv[1])\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n")  # holds the lock until the test closes its stdin


@pytest.fixture
def holder():
    """Start a process that holds a directory's lock (as a running advbench does); yield its pid."""
    started = []

    def start(path):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline() == "held\n"
        return proc.pid
    yield start
    for proc in started:
        proc.communicate(input="", timeout=60)


def snapshot(path: Path) -> dict:
    """Every file below ``path`` (hidden ones too) with its bytes, and every directory."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def stopped(tmp_path) -> Path:
    run = tmp_path / "run"
    # schedule=constant: the resumes below change epochs, which a schedule over the whole run would refuse
    code, _ = cli(*DIGITS, "epochs=3", "schedule=constant", "stop_after_epoch=1", f"hydra.run.dir={run}",
                  cwd=tmp_path)
    assert code == 3
    return run


def advbench_proc(*overrides, cwd):
    return subprocess.Popen([sys.executable, "-m", "advbench", *overrides], cwd=cwd, stderr=subprocess.PIPE,
                            text=True)


def test_two_runs_started_together_into_one_directory(tmp_path):
    run = tmp_path / "run"
    procs = {eps: advbench_proc(*TINY, "epochs=3", f"eps={eps}", f"hydra.run.dir={run}", cwd=tmp_path)
             for eps in ("0.05", "0.1")}
    errs = {eps: proc.communicate(timeout=600)[1] for eps, proc in procs.items()}
    codes = {eps: proc.returncode for eps, proc in procs.items()}
    assert sorted(codes.values()) == [0, 2], errs
    (winner,), (loser,) = ([eps for eps, c in codes.items() if c == code] for code in (0, 2))
    line = one_line_error(errs[loser], f"hydra.run.dir={run}")
    # Refused while the winner ran, or (on a slow start) after it finished: either way nothing of it is touched.
    if "is in use" in line:  # named, unless caught in the instant between its lock and its owner record
        assert f"pid {procs[winner].pid} on host" in line or "starting" in line
        assert "resume=" not in line
    else:
        assert f"already holds a run (finished): continue it with resume={run}" in line
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["eps"] == winner
    assert f"eps={winner}" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert json.loads((run / "results.json").read_text())["eps"]["given"] == winner
    log = (run / "advbench.log").read_text()
    assert log.count("files in") == 1 and f"(eps={winner})" in log and "ERROR" not in log
    assert (run / "status").read_text() == "finished\n" and not (run / lock.OWNER).exists()


def test_two_resumes_started_together(tmp_path):
    run = stopped(tmp_path)
    before = snapshot(run)
    procs = {n: advbench_proc(f"resume={run}", "epochs=5000", "progress=false", f"eval.n_examples={n}",
                              cwd=tmp_path) for n in (30, 31)}
    while all(proc.poll() is None for proc in procs.values()):
        time.sleep(0.05)
    (loser,) = [n for n, proc in procs.items() if proc.poll() is not None]
    (winner,) = [n for n in procs if n != loser]
    # 5000 epochs: the winner still trains when the loser, refused in its first seconds, has exited.
    assert procs[loser].returncode == 2
    line = one_line_error(procs[loser].communicate()[1], f"resume={run}: the run is still running")
    assert line.count("resume=") == 1  # no advice to resume a run that runs
    assert f"pid {procs[winner].pid} on host" in line or "starting" in line
    while (run / "status").read_text() != "running\n":  # the winner began (its config passed every check)
        assert procs[winner].poll() is None
        time.sleep(0.05)
    owner = lock.read_owner(run)
    assert owner["pid"] == procs[winner].pid and owner["host"] == socket.gethostname()
    procs[winner].send_signal(signal.SIGINT)
    _, err = procs[winner].communicate(timeout=300)
    assert procs[winner].returncode == 3 and "Traceback" not in err, err
    overrides = yaml.safe_load((run / ".hydra_resume" / "overrides.yaml").read_text())
    assert f"eval.n_examples={winner}" in overrides
    assert (run / ".hydra" / "config.yaml").read_bytes() == before[run / ".hydra" / "config.yaml"]
    log = (run / "advbench.log").read_text()
    assert log.startswith(before[run / "advbench.log"].decode()) and "still running" not in log
    assert (run / "status").read_text().startswith("interrupted: SIGINT")


@pytest.mark.parametrize("override, expected", [("lr=0.1", "lr would change the experiment being resumed"),
                                                ("threads=-1", "threads=-1")])
def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path, override, expected):
    run = stopped(tmp_path)
    before = snapshot(run)
    code, err = cli(f"resume={run}", override, cwd=tmp_path)
    assert code == 2
    one_line_error(err, expected)
    assert snapshot(run) == before  # no .hydra_resume/, no log line, no owner record, the same status


def test_a_command_refused_by_a_running_run_writes_nothing(tmp_path, holder):
    run = stopped(tmp_path)
    pid = holder(run)
    before = snapshot(run)
    code, err = cli(f"resume={run}", cwd=tmp_path)
    line = one_line_error(err, f"resume={run}: the run is still running (pid {pid} on host ")
    assert code == 2 and line.count("resume=") == 1 and f"kill -INT {pid}" in line
    code, err = cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    line = one_line_error(err, f"hydra.run.dir={run} is in use: a run is running there (pid {pid} on host ")
    assert code == 2 and "resume=" not in line
    assert snapshot(run) == before


def test_a_stale_lock_does_not_block_a_resume(tmp_path):
    run = stopped(tmp_path)
    # As a run killed with SIGKILL leaves it: its status says running, its owner record names a dead process.
    pid = dead_pid()
    (run / lock.OWNER).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "then"}))
    (run / "status").write_text("running\n")
    code, err = cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)  # a new run is still refused: it holds a run
    line = one_line_error(err, f"already holds a run (running, but its process (pid {pid} on host ")
    assert code == 2 and f"continue it with resume={run}" in line
    cli(f"resume={run}", "epochs=2", cwd=tmp_path, check=True)
    assert (run / "status").read_text() == "finished\n" and not (run / lock.OWNER).exists()
    assert f"taking it over from pid {pid} on host" in (run / "advbench.log").read_text()


def test_a_sweep_refuses_a_directory_another_sweep_holds(tmp_path, holder):
    sweep = tmp_path / "sweep"
    (sweep / "eps=0.1" / "seed=0").mkdir(parents=True)
    (sweep / "eps=0.1" / "seed=0" / "status").write_text("running\n")  # its first job runs
    pid = holder(sweep)
    before = snapshot(sweep)
    for resume in ([], ["resume=auto"]):
        code, err = cli("-m", *TINY, "epochs=1", f"hydra.sweep.dir={sweep}", *resume, cwd=tmp_path)
        line = one_line_error(err, f"hydra.sweep.dir={sweep} is in use: a sweep is running there (pid {pid} on ")
        assert code == 2 and "resume=" not in line
    assert snapshot(sweep) == before


def test_a_sweep_job_whose_directory_is_in_use_is_not_run(tmp_path, holder):
    sweep = [*TINY, "epochs=1", "eps=0.05,0.1", f"hydra.sweep.dir={tmp_path}/sweep"]
    cli("-m", *sweep, cwd=tmp_path, check=True)
    busy, done = (next((tmp_path / "sweep").glob(f"*eps={eps},*/seed=0")) for eps in ("0.05", "0.1"))
    pid = holder(busy)
    before = snapshot(tmp_path / "sweep")
    code, err = cli("-m", *sweep, "resume=auto", cwd=tmp_path)
    line = one_line_error(err, "jobs did not finish")  # 1 of 1, or of 2 if the first sweep ended this second
    assert re.search(r"\b1 of [12] jobs did not finish", line)
    assert code == 1 and f"eps=0.05,{busy.parent.name.split('eps=0.05,')[1]}/seed=0: not run" in line
    assert f"another advbench run is running there (pid {pid} on host" in line
    # The busy job's directory is left to its holder, the finished job is skipped: not a byte written in either.
    assert {p: b for p, b in snapshot(tmp_path / "sweep").items() if p.name != "multirun.yaml"} == {
        p: b for p, b in before.items() if p.name != "multirun.yaml"}
    assert (done / "status").read_text() == "finished\n"


def test_without_file_locks_the_owner_record_claims_the_directory(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / lock.OWNER).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                         "since": "then"}))
        with pytest.raises(lock.InUse, match=f"pid {sleeper.pid} on host"):
            lock.hold(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.hold(tmp_path)  # the record's process is gone: taken over
    try:
        assert lock.read_owner(tmp_path)["pid"] == os.getpid()
    finally:
        lock.release(tmp_path)
    assert not (tmp_path / lock.OWNER).exists()
