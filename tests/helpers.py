"""Running the CLI from tests: in a subprocess (the real command) or in this process (fast, patchable)."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys

import torch

TINY = ["dataset=synthetic", "model=mlp", "model.hidden=32", "epochs=2", "batch_size=64", "progress=false",
        "eval.n_examples=100", "threads=1"]
DIGITS = ["dataset=digits", "model=mlp", "model.hidden=32", "epochs=2", "progress=false", "val.attack.steps=2",
          "eval.n_examples=60", "eval.attacks.pgd20.steps=3", "threads=1"]
TIMING = ("seconds", "images_per_s")


def advbench(*overrides, cwd, check=True):
    """Run ``python -m advbench`` with ``overrides`` in ``cwd``; return the completed process."""
    proc = subprocess.run([sys.executable, "-m", "advbench", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli(*overrides, cwd, check=False):
    """Run the ``advbench`` entry point in this process (monkeypatches apply); return (exit code, stderr)."""
    from advbench.cli import main
    argv, threads, here = sys.argv, torch.get_num_threads(), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    err = io.StringIO()
    sys.argv = ["advbench", *overrides]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as done:
                code = done.code or 0
    finally:
        sys.argv = argv
        os.chdir(here)
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)
    if check:
        assert code == 0, err.getvalue()
    return code, err.getvalue()


def one_line_error(stderr: str, expected: str) -> str:
    """The single error line holding ``expected``; fails if there is a traceback or no such short line."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if expected in line]
    assert lines and len(lines[0]) < 500, stderr
    return lines[0]


def metrics_without_timing(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def png_size(path) -> tuple:
    """(width, height) of a PNG file, from its header; fails if it is not a PNG."""
    data = open(path, "rb").read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def tiny_cnn(in_shape, n_classes, mean, std):
    """A user's own model factory, outside advbench (found on sys.path, as a user's package would be)."""
    from advbench.models import Normalize
    c, h, w = in_shape
    return torch.nn.Sequential(Normalize(mean, std), torch.nn.Conv2d(c, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * h * w, n_classes))


def predict(model, x):
    """Predicted classes of ``x`` in eval mode, without grad (the caller's modes restored)."""
    from advbench.tasks.classification import Classification
    return Classification(0).predict(model, x).argmax(1)


def input_grad(model, x, y):
    """The input gradient of the summed cross-entropy, as attacks compute it."""
    from advbench.attacks import loss_and_grad
    from advbench.tasks.classification import Classification
    objective = Classification(0).objective()
    return loss_and_grad(model, x, lambda outputs: objective(outputs, y))[2]


def flags_of(model, x, y, attacks, batch_size=500, cascade=True, keep=0):
    """Per-example flags of a classification evaluation on the CPU."""
    from advbench.evaluation import Evaluator
    from advbench.tasks.classification import Classification
    return Evaluator(Classification(0), "cpu", batch_size=batch_size, cascade=cascade).flags(model, x, y, attacks,
                                                                                              keep)


class TinyNet(torch.nn.Module):
    """A user's own model class with its own keyword arguments (none of advbench's)."""

    def __init__(self, width: int = 4, classes: int = 10, channels: int = 1):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                                       torch.nn.Linear(4 * width, classes))

    def forward(self, x):
        return self.net(x)
