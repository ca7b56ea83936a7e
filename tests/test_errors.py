"""Bad input, divergence, a full disk and signals: one line naming the key, the documented exit code, no traceback,
nothing half-written."""
import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from advbench.training import modes as training
from advbench.eps import parse_eps
from advbench.errors import AdvbenchError
from helpers import DIGITS, TINY, cli, one_line_error


@pytest.mark.parametrize("overrides, expected", [
    (["lr=-1"], "lr=-1.0: expected a positive number"),
    (["weight_decay=-1"], "weight_decay=-1.0"),
    (["threads=-1"], "threads=-1"),
    (["grad_clip=-1"], "grad_clip=-1.0"),
    (["training=free", "attack=fgsm", "training.replays=0"], "training.replays=0"),
    (["training.guard.n_examples=0"], "training.guard.n_examples=0"),
    (["val.attack.name=none"], "val.attack.name=none"),
    (["eval.save_examples=-1"], "eval.save_examples=-1"),
    (["eval.sanity.sample=0"], "eval.sanity.sample=0"),
    (["dataset.std=[0]"], "dataset.std=[0.0]"),
    (["eps=" + "1" * 300], "characters long"),
    (["eval.eps_list=[abc]"], "eval.eps_list[0]='abc' is not a valid budget"),  # the entry, not the attack
    (["eval.eps_list=[0.05,2]"], "eval.eps_list[1]=2: eval.attacks.pgd20: eps=2 is above 1"),
    (["+unknown_key=1"], "unknown_key is not a key advbench knows"),
    (["+attack.bogus=1"], "attack.bogus is not a key advbench knows"),
    (["+eval.attacks.fgsm={name: fgsm, bogus: 1}"], "eval.attacks.fgsm"),
    (["+model.foo=1"], "model.foo is not an argument of advbench.models.mlp: it takes hidden, depth"),
])
def test_bad_values_get_one_line_naming_the_key_and_exit_2(tmp_path, overrides, expected):
    code, err = cli(*TINY, *overrides, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert code == 2
    one_line_error(err, expected)
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("override", ["foo=1", "amp=fp8", "attack=nope", "epochs=abc"])
def test_hydras_own_errors_exit_2_as_well(tmp_path, override):
    code, err = cli(*TINY, override, cwd=tmp_path)
    assert code == 2 and "Traceback" not in err and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("overrides, key", [
    (["hparams_search=robust_optuna", "hydra.mode=RUN"], "hparams_search=robust_optuna"),
    (["hydra/sweeper=optuna"], "hydra/sweeper=optuna"),
])
def test_a_search_in_a_single_run_is_refused_not_run_plain(tmp_path, overrides, key):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    code, err = cli(*TINY, *overrides, cwd=tmp_path)
    assert code == 2 and f"add -m (advbench -m {key}" in one_line_error(err, f"{key} is a sweep")
    assert not list(tmp_path.iterdir())  # no run directory, no sweep directory


def test_sweep_params_in_a_single_run_are_refused(caplog):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from advbench.runtime.callbacks import check_single
    from conftest import CONF
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=list(TINY), return_hydra_config=True)
    check_single(cfg)  # the default basic sweeper without params: a plain run
    OmegaConf.set_struct(cfg, False)
    cfg.hydra.sweeper.params = {"lr": "0.1,0.2"}
    with pytest.raises(SystemExit) as refused:
        check_single(cfg)
    assert refused.value.code == 2 and "hydra.sweeper.params is a sweep" in caplog.text and "add -m" in caplog.text


def test_hparams_search_without_m_runs_the_search(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cli("hparams_search=robust_optuna", *DIGITS, "epochs=1", "hydra.sweeper.n_trials=1",
        f"hydra.sweep.dir={tmp_path}/s", cwd=tmp_path, check=True)
    assert (tmp_path / "s" / "optimization_results.yaml").is_file()
    assert len(list((tmp_path / "s").glob("*/seed=0/results.json"))) == 1 and not (tmp_path / "outputs").exists()


FAKE = ["dataset=torchvision", "dataset.class_name=FakeData", "+dataset.kwargs={size: 60, image_size: [3, 8, 8], "
        "num_classes: 3}", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]", "dataset.val_size=10",
        "dataset.workers=0", "model=mlp", "model.hidden=16", "epochs=1", "progress=false", "threads=1",
        "eval.n_examples=100", "eval.attacks.pgd20.steps=2"]


def test_a_torchvision_set_without_splits_is_evaluated_on_held_out_examples(tmp_path):
    code, err = cli(*FAKE, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    line = one_line_error(err, "dataset.class_name=FakeData has no train/test split")
    assert "15 of its 60 examples are held out as the test split" in line and "dataset.split_seed=0" in line
    assert json.loads((tmp_path / "run" / "results.json").read_text())["n_examples"] == 15


def test_the_held_out_test_split_is_disjoint_and_fixed_by_split_seed():
    from omegaconf import OmegaConf

    from advbench.data.external import torchvision_sets
    cfg = OmegaConf.create({"class_name": "FakeData", "kwargs": {"size": 40, "image_size": [1, 4, 4]},
                            "root": "data", "download": False, "train_split": "train", "test_split": "test",
                            "test_size": 0.25, "split_seed": 0})
    first, again = torchvision_sets(cfg), torchvision_sets(cfg)
    assert (len(first.train), len(first.test)) == (30, 10)
    assert sorted(first.train.indices + first.test.indices) == list(range(40))  # no test example is trained on
    assert first.test.indices == again.test.indices
    cfg.split_seed = 1
    assert torchvision_sets(cfg).test.indices != first.test.indices
    cfg.kwargs.size, cfg.test_size = 3, 0.1
    with pytest.raises(AdvbenchError, match=r"dataset.test_size=0.1: holds out 0 of the 3 examples"):
        torchvision_sets(cfg)


def test_the_eps_parser_is_bounded():
    # Fraction('1e10000000') is exact: without bounds this took over a minute of CPU.
    for text in ("1e10000000/1e10000001", "9" * 41, "1e9999"):
        with pytest.raises(AdvbenchError, match="eps="):
            parse_eps(text)
    assert parse_eps("1e-300/1e-299") == pytest.approx(0.1)


def test_an_evaluation_attack_can_be_added_from_the_command_line(tmp_path):
    cli(*TINY, "epochs=1", "+eval.attacks.fgsm={name: fgsm}", "eval.attacks.pgd20.steps=3",
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["robust_acc_by_attack"]) == ["pgd20", "fgsm"]
    assert results["attacks"]["fgsm"]["name"] == "fgsm" and results["attacks"]["pgd20"]["steps"] == 3


def test_divergence_stops_at_once_keeping_the_last_good_epoch(tmp_path, monkeypatch):
    real_step, calls = training.Standard.step, []

    def diverging(self, b):  # the loss turns NaN at the first step of epoch 2 (350 examples, batch 64: 6 steps)
        calls.append(1)
        if len(calls) > 6:
            b = dataclasses.replace(b, update=lambda loss, after=None, real=b.update: real(loss * float("nan")))
        return real_step(self, b)
    monkeypatch.setattr(training.Standard, "step", diverging)
    code, err = cli(*TINY, "training=standard", "epochs=3", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    run = tmp_path / "run"
    assert code == 1
    one_line_error(err, "diverged at epoch 2 step 1")
    assert (run / "status").read_text().startswith("failed: diverged at epoch 2 step 1")
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1 and not (run / "results.json").exists()
    for path in run.glob("*.json*"):
        assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_a_full_disk_is_one_line_and_earlier_files_stay_intact(tmp_path, monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    code, err = cli(*TINY, "epochs=3", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    run = tmp_path / "run"
    assert code == 1
    line = one_line_error(err, "no space left on device")
    assert "last.pt" in line
    assert "no space left on device" in (run / "status").read_text()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1  # the previous last.pt is intact
    assert not list(run.glob(".*.tmp"))


def test_a_run_does_not_start_on_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30, 1024))
    code, err = cli(*TINY, cwd=tmp_path)
    assert code == 1 and "no space left on device" in one_line_error(err, "no space left")
    assert not (tmp_path / "outputs").exists()  # nothing written, no empty .hydra files


WRITABLE = "give a directory advbench can write"


@pytest.mark.parametrize("args, expected", [
    (["hydra.run.dir=mine"], f"hydra.run.dir=mine: cannot make the directory there (it is a file): {WRITABLE}"),
    (["hydra.run.dir=mine/run"],
     f"hydra.run.dir=mine/run: cannot make the directory there (Not a directory): {WRITABLE}"),
    (["-m", "eps=0.1,0.2", "hydra.sweep.dir=mine"],
     f"hydra.sweep.dir=mine: cannot make the directory there (it is a file): {WRITABLE}"),
    (["hydra.run.dir="], "hydra.run.dir is empty: give a directory"),  # not the launch directory
    (["-m", "eps=0.1,0.2", "hydra.sweep.dir="], "hydra.sweep.dir is empty: give a directory"),
])
def test_a_directory_that_cannot_be_made_is_one_line(tmp_path, args, expected):
    (tmp_path / "mine").write_text("a file of the user's")
    code, err = cli(*args, *TINY, cwd=tmp_path)
    assert code == 2 and one_line_error(err, expected)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # the user's file as it was, nothing beside it
    assert (tmp_path / "mine").read_text() == "a file of the user's"


def test_a_read_only_launch_directory_is_one_line(tmp_path, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    monkeypatch.setattr(os, "mkdir", read_only)
    # A file system of no blocks (/proc's) is not a full disk: the directory that cannot be made is the reason.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(0, 0, 0))
    for args, key in [((), "hydra.run.dir"), (("-m", "eps=0.1,0.2"), "hydra.sweep.dir")]:
        code, err = cli(*args, *TINY, cwd=tmp_path)
        assert code == 2, err
        one_line_error(err, f"{key}: cannot make the directory below {tmp_path} (Read-only file system): start")
    assert list(tmp_path.iterdir()) == []


def test_sigint_during_start_up_is_a_clean_exit_3(tmp_path):
    # The signal arrives while the heavy imports run (deterministically: sent from inside the start-up).
    script = ("import os, signal, sys\n"
              "import advbench.cli as cli\n"
              "real = cli._load_entry\n"
              "def load():\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    return real()\n"
              "cli._load_entry = load\n"
              "sys.argv = ['advbench']\n"
              "cli.main()\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    one_line_error(proc.stderr, "interrupted (SIGINT) during start-up")
    assert not (tmp_path / "outputs").exists()


def test_repeated_sigints_still_stop_cleanly_with_exit_3(tmp_path, monkeypatch):
    real_step, calls = training.Standard.step, []

    def interrupted(self, b):
        calls.append(1)
        if len(calls) == 8:  # epoch 2: Ctrl-C, and again while the first is being handled
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, b)

    from advbench import main as entry
    real_record = entry.record

    def record_twice(out, status):
        os.kill(os.getpid(), signal.SIGINT)
        real_record(out, status)
    monkeypatch.setattr(training.Standard, "step", interrupted)
    monkeypatch.setattr(entry, "record", record_twice)
    code, err = cli(*TINY, "training=standard", "epochs=3", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert code == 3 and "Traceback" not in err
    assert (tmp_path / "run" / "status").read_text().startswith("interrupted: SIGINT")
    assert f"resume={tmp_path}/run" in err


# torch.save's zip writer is made, and the Ctrl-C handled, before its `with` block: unfinished, the writer writes the
# archive's end in its destructor, once the exception is freed, into the file the temp-file writer has closed.
SAVE_CUT_SHORT = ("import os, signal, sys, torch\n"
                  "from pathlib import Path\n"
                  "from advbench.errors import Interrupted\n"
                  "from advbench.runtime.checkpoint import save_checkpoint\n"
                  "from advbench.runtime.signals import install_signal_handlers\n"
                  "install_signal_handlers()\n"
                  "opener_init = torch.serialization._opener.__init__\n"
                  "def init(self, file_like):\n"
                  "    if isinstance(file_like, torch._C.PyTorchFileWriter):\n"
                  "        os.kill(os.getpid(), signal.SIGINT)\n"
                  "    opener_init(self, file_like)\n"
                  "torch.serialization._opener.__init__ = init\n"
                  "try:\n"
                  "    save_checkpoint(Path(sys.argv[1]), torch.nn.Linear(2, 2), {'epochs': 1})\n"
                  "except Interrupted as err:\n"
                  "    print('interrupted', err, flush=True)\n")


def test_a_sigint_inside_torch_save_waits_for_the_checkpoint(tmp_path):
    # It used to end the process with SIGABRT (std::terminate: "write to closed file"), the run's stop unrecorded.
    proc = subprocess.run([sys.executable, "-c", SAVE_CUT_SHORT, str(tmp_path / "last.pt")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "interrupted SIGINT\n", proc.stderr
    assert torch.load(tmp_path / "last.pt", weights_only=True)["config"] == {"epochs": 1}  # whole, not cut short
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# A TINY run of 50 epochs in `python -c`: long enough that only a stop ends it before its last epoch.
RUN_IN_SCRIPT = (f"sys.argv = ['advbench', *{TINY!r}, 'training=standard', 'epochs=50', 'hydra.run.dir=run']\n"
                 "cli.main()\n")


def at_training_step_5(call: str) -> str:
    """Script lines that make the run ``call`` before its fifth training step."""
    return ("from advbench.training import modes\n"
            "real, calls = modes.Standard.step, []\n"
            "def step(self, batch):\n"
            "    calls.append(1)\n"
            "    if len(calls) == 5:\n"
            f"        {call}\n"
            "    return real(self, batch)\n"
            "modes.Standard.step = step\n")


# The garbage collector runs __del__ methods and weakref callbacks (matplotlib's, torch's) in the middle of any code;
# a signal handled in one raises there, and Python reports the exception and drops it.
KILLS_ON_DEL = ("import os, signal, sys, time\n"
                "class KillsOnDel:\n"
                "    def __init__(self, signum):\n"
                "        self.signum = signum\n"
                "    def __del__(self):\n"
                "        os.kill(os.getpid(), self.signum)\n")


# The thread that sends the signal again is quicker than the hook that started it (as on a loaded machine).
RACING_TIMER = ("import threading\n"
                "raced = []\n"
                "class RacingTimer(threading.Timer):\n"
                "    def start(self):\n"
                "        if not raced:\n"
                "            raced.append(True)\n"
                "            os.kill(*self.args)\n"
                "        super().start()\n"
                "threading.Timer = RacingTimer\n")


@pytest.mark.parametrize("racing", [False, True])
def test_a_stop_raised_in_a_del_is_raised_again_where_it_counts(racing):
    script = KILLS_ON_DEL + (RACING_TIMER if racing else "") + ("from advbench.errors import Interrupted\n"
                             "from advbench.runtime.signals import install_signal_handlers\n"
                             "install_signal_handlers()\n"
                             "try:\n"
                             "    KillsOnDel(signal.SIGTERM)\n"
                             "    for _ in range(1000):\n"
                             "        time.sleep(0.01)\n"
                             "    print('not stopped', flush=True)\n"
                             "except Interrupted as err:\n"
                             "    print('interrupted', err, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.stdout == "interrupted SIGTERM\n" and proc.stderr == "", proc.stderr  # no "Exception ignored"


def test_a_sigint_handled_in_a_del_during_training_stops_the_run(tmp_path):
    # It used to be dropped (and the signals after it ignored): the run went on to its last epoch and exit 0.
    script = (KILLS_ON_DEL + "import advbench.cli as cli\n" + at_training_step_5("KillsOnDel(signal.SIGINT)")
              + RUN_IN_SCRIPT)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr and "ignored" not in proc.stderr, proc.stderr
    assert (tmp_path / "run" / "status").read_text().startswith("interrupted: SIGINT")


# Python wraps an exception raised in a __set_name__ (a class being made, as in an import) in a RuntimeError.
KILLS_ON_SET_NAME = ("import os, signal, sys\n"
                     "class KillsOnSetName:\n"
                     "    def __set_name__(self, owner, name):\n"
                     "        os.kill(os.getpid(), signal.SIGINT)\n"
                     "def make_a_class():\n"
                     "    type('Owner', (), {'attr': KillsOnSetName()})\n")


def test_a_stop_wrapped_by_python_is_still_a_stop():
    from advbench.errors import Interrupted, interruption
    stop = Interrupted("SIGINT")
    try:
        class Raises:
            def __set_name__(self, owner, name):
                raise stop
        type("Owner", (), {"attr": Raises()})
    except RuntimeError as wrapped:
        assert interruption(wrapped) is stop and interruption(stop) is stop
    else:
        pytest.fail("Python no longer wraps an exception of __set_name__: the test needs another wrapper")
    try:
        try:
            raise stop
        finally:
            raise ValueError("a bug in the clean-up")  # only the context is the stop: a failure of its own
    except ValueError as failed:
        assert interruption(failed) is None and interruption(None) is None


@pytest.mark.parametrize("when", ["training", "start-up"])
def test_a_sigint_wrapped_in_a_runtime_error_stops_with_exit_3(tmp_path, when):
    # It used to be a bug's exit 1 (status failed, a traceback), as a stress loop of random signals found.
    patch = at_training_step_5("make_a_class()") if when == "training" else ("real = cli._load_entry\n"
                                                                            "def load():\n"
                                                                            "    make_a_class()\n"
                                                                            "    return real()\n"
                                                                            "cli._load_entry = load\n")
    script = KILLS_ON_SET_NAME + "import advbench.cli as cli\n" + patch + RUN_IN_SCRIPT
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    if when == "training":
        assert (tmp_path / "run" / "status").read_text().startswith("interrupted: SIGINT")
    else:
        one_line_error(proc.stderr, "interrupted (SIGINT) during start-up: nothing was written")
        assert not (tmp_path / "run").exists()


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler, as in a user's script (not inherited: a background job starts with SIGINT
    ignored); afterwards the one the test found."""
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, found)


def test_deferred_signals_reach_the_handler_in_place_after_the_block(python_sigint):
    from advbench.runtime.signals import deferred
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred():
            # raise_signal, not os.kill: the kernel may hand a process-directed signal to another thread (torch's,
            # Lightning's), whose handler runs later, maybe after the block; raise_signal is the calling thread's.
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with deferred():  # no signal: nothing is raised
        done.append("again")
    assert done[-1] == "again"

    def in_a_thread():  # signal.signal would raise there; handlers run in the main thread anyway
        with deferred():
            done.append("in a thread")
    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    assert done[-1] == "in a thread" and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def sigint_twice(proc) -> None:
    """Ctrl-C, and again 50 ms later (the second may find the process gone)."""
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)


def test_two_sigints_50_ms_apart_during_training_exit_3(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "advbench", "dataset=digits", "model=mlp", "epochs=1000",
                             "progress=false", "threads=1", "val.attack.steps=2", f"hydra.run.dir={run}"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    while not (run / "last.pt").exists():  # training: the first epoch's files are there
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    sigint_twice(proc)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3 and "Traceback" not in err
    one_line_error(err, f"continue with: advbench resume={run}")
    assert (run / "status").read_text().startswith("interrupted: SIGINT")
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] >= 1 and not list(run.glob(".*.tmp"))


# A SIGINT while Python finalizes (from a module global's __del__), after it has put back the default action of
# every signal it handled: the moment a Ctrl-C used to kill the process with 130.
SIGINT_AT_EXIT = ("import os, signal, sys, time\n"
                  "import advbench.cli as cli\n"
                  "class SignalAtExit:\n"
                  "    def __init__(self):\n"
                  "        self.kill, self.pid = os.kill, os.getpid()\n"
                  "    def __del__(self):\n"
                  "        self.kill(self.pid, signal.SIGINT)\n"
                  "at_exit = SignalAtExit()\n")


def test_two_sigints_50_ms_apart_during_start_up_exit_3(tmp_path):
    # The start-up waits for the signals; a third comes while Python finalizes.
    script = (SIGINT_AT_EXIT +
              "real = cli._load_entry\n"
              "def load():\n"
              "    entry = real()\n"
              "    print('starting', flush=True)\n"
              "    time.sleep(600)\n"
              "    return entry\n"
              "cli._load_entry = load\n"
              "sys.argv = ['advbench']\n"
              "cli.main()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "starting\n"
    sigint_twice(proc)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3 and "Traceback" not in err
    one_line_error(err, "interrupted (SIGINT) during start-up")
    assert not (tmp_path / "outputs").exists()


def test_a_sigint_in_the_teardown_of_a_finished_run_keeps_exit_0(tmp_path):
    # Python's teardown takes about a second once torch is loaded: a Ctrl-C then must not make a finished run 130.
    script = SIGINT_AT_EXIT + f"sys.argv = ['advbench', *{TINY!r}, 'epochs=1', 'hydra.run.dir=run']\ncli.main()\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "run" / "status").read_text() == "finished\n"
