"""Per-example time of an attack step (forward and input gradient) and of a forward pass against the batch size,
on the CPU, for three of advbench's models (a benchmark, not a test): what ``eval.batch_size=auto`` rests on there.

A big batch is slower per example on the CPU once its layer outputs run to tens of MB: glibc returns buffers that
large to the OS when they are freed, so every pass faults their pages in again (it shows as system time).
``auto`` takes the largest batch whose largest layer output fits in 4 MiB (``advbench/evaluation/batch.py``);
this prints the curve and marks its pick.

    python benchmarks/cpu_batch.py --threads 1
"""
import argparse
import logging
import subprocess
import sys

import torch
from timing import timed  # benchmarks/timing.py

from advbench.attacks.gradients import attack_mode, loss_and_grad
from advbench.evaluation.batch import auto_batch_size
from advbench.models.image import PreActResNet18, mlp, small_cnn

log = logging.getLogger("benchmark")
MODELS = {  # name: (model, input shape, examples timed)
    "mlp, 8x8 digits": (lambda: mlp((1, 8, 8), 10, (0.5,), (0.5,)), (1, 8, 8), 4000),
    "small_cnn, 28x28 Fashion-MNIST": (lambda: small_cnn((1, 28, 28), 10, (0.5,), (0.5,)), (1, 28, 28), 1000),
    "PreActResNet18, 32x32 CIFAR": (lambda: PreActResNet18((3, 32, 32), 10, (0.5,) * 3, (0.5,) * 3), (3, 32, 32),
                                    256),
}
BATCHES = (16, 32, 64, 128, 256, 500)


def per_example_us(model, x, y, batch, step: bool) -> float:
    """Microseconds per example of one pass over ``x`` in blocks of ``batch`` (after one untimed pass)."""
    cpu = torch.device("cpu")

    def one_pass():
        for i in range(0, len(x), batch):
            if step:
                yi = y[i:i + batch]
                loss_and_grad(model, x[i:i + batch],
                              lambda z: torch.nn.functional.cross_entropy(z, yi, reduction="none"))
            else:
                with torch.no_grad():
                    model(x[i:i + batch])
    one_pass()
    return timed(one_pass, cpu)[1] / len(x) * 1e6


def measure(name: str, batch: int, repeats: int) -> tuple:
    """(step, forward) microseconds per example of model ``name`` at ``batch``: the fastest of ``repeats``."""
    build, shape, n = MODELS[name]
    model = build().eval().to(memory_format=torch.channels_last)
    x, y = torch.rand(n, *shape), torch.randint(0, 10, (n,))
    with attack_mode(model):
        return tuple(min(per_example_us(model, x, y, batch, step) for _ in range(repeats)) for step in (True, False))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="passes per batch size; the fastest is printed")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.one:
        print(*measure(args.one[0], int(args.one[1]), args.repeats))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("advbench").setLevel(logging.WARNING)  # not auto_batch_size's own line
    log.info("CPU, %d thread(s), torch %s; microseconds per example, the fastest of %d passes, each batch size in "
             "a process of its own (as a run is: the allocator's state carries over within one)", args.threads,
             torch.__version__, args.repeats)
    log.info("%-32s %-8s %s", "model", "pass", "  ".join(f"{b:>7d}" for b in BATCHES))
    for name, (build, shape, _) in MODELS.items():
        pick = auto_batch_size(build(), shape, "cpu")
        times = [subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--repeats",
                                 str(args.repeats), "--one", name, str(b)], check=True, capture_output=True,
                                text=True).stdout.split()[-2:] for b in BATCHES]
        for i, what in enumerate(("step", "forward")):
            cells = [f"{float(t[i]):6.0f}{'*' if b == pick else ' '}" for b, t in zip(BATCHES, times)]
            log.info("%-32s %-8s %s", name, what, "  ".join(cells))
    log.info("* eval.batch_size=auto's pick")


if __name__ == "__main__":
    main()
