"""The command line's help, its shell completion without torch, and the logs' readable numbers."""
import os
import subprocess
import sys

from advbench.runtime.readable import number, row


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "advbench", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_help_starts_with_what_the_tool_does_its_groups_and_examples():
    out = run("--help").stdout
    assert out.startswith("advbench: adversarial training and robustness evaluation in PyTorch.")
    assert "advbench -m eps=2/255,4/255,8/255" in out and "+experiment=" in out
    groups = out.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "logger: csv, many, mlflow, none, tensorboard, wandb" in groups
    assert "hparams_search: robust_optuna" in groups


def test_the_cli_path_imports_no_torch_until_a_run_starts():
    # --help and Tab completion go through advbench.main; torch (seconds to import) waits for the run
    code = "import sys, advbench.main; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_shell_completion_answers_options():
    out = run("-sc", "query=bash", env={"COMP_LINE": "advbench logger=ml"}).stdout
    assert out.split() == ["logger=mlflow"]


def test_logs_print_percentages_and_rates():
    assert number("val_robust_acc", 0.69188) == "69.19%" and number("images_per_s", 16270.4) == "16,270 img/s"
    expected = "train_loss 0.4137, seconds 3.0 s, lr 0.00123"
    assert row({"train_loss": 0.41372, "seconds": 3.04, "lr": 0.0012345}) == expected


def test_help_into_a_reader_that_stops_early_ends_quietly():
    """`advbench --help | head -1`: the closed pipe is the reader's choice, not an error with a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "advbench", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the first byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err


def test_help_names_the_completion_install_and_the_docs():
    out = run("--help").stdout
    assert 'eval "$(advbench -sc install=bash)"' in out and "docs/" in out
