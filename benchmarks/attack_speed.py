"""Attack and training throughput, measured side by side in one process (a benchmark, not a test).

Prints images/s of advbench's PGD-10 and torchattacks' PGD-10 (if installed) on the same model and batch, and
the cost of a PGD-7 adversarial training epoch relative to a clean epoch.

    python benchmarks/attack_speed.py [--batches 20] [--batch-size 256]
"""
import argparse
import logging
import time

import torch
import torch.nn.functional as F

from advbench.attacks import Attack
from advbench.models import small_cnn

log = logging.getLogger("benchmark")


def images_per_s(fn, x, batches: int) -> float:
    """Throughput of ``fn(x)`` over ``batches`` calls, after one warm-up call."""
    fn(x)
    start = time.perf_counter()
    for _ in range(batches):
        fn(x)
    return batches * len(x) / (time.perf_counter() - start)


def train_step(model, optimizer, x, y, attack=None):
    x_in = attack(model, x, y) if attack else x
    loss = F.cross_entropy(model(x_in), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    # As advbench runs it: channels_last (oneDNN's faster NHWC kernels); both libraries attack this same model.
    model = small_cnn((1, 28, 28), 10, [0.2860], [0.3530]).to(memory_format=torch.channels_last).eval()
    x, y = torch.rand(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))
    eps, alpha = 0.1, 0.025
    ours = Attack("pgd", "linf", eps, alpha, steps=10, random_start=True)
    rates = {"advbench PGD-10": images_per_s(lambda b: ours(model, b, y), x, args.batches)}
    try:
        import torchattacks
        theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=10, random_start=True)
        rates["torchattacks PGD-10"] = images_per_s(lambda b: theirs(b, y), x, args.batches)
    except ImportError:
        log.info("torchattacks is not installed: pip install torchattacks (or make bench)")
    for name, rate in rates.items():
        log.info("%-22s %8.0f images/s", name, rate)
    if len(rates) == 2:
        log.info("%-22s %8.2f x", "advbench / torchattacks", rates["advbench PGD-10"] / rates["torchattacks PGD-10"])

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pgd7 = Attack("pgd", "linf", eps, 2.5 * eps / 7, steps=7, random_start=True)
    clean = images_per_s(lambda b: train_step(model, optimizer, b, y), x, args.batches)
    adversarial = images_per_s(lambda b: train_step(model, optimizer, b, y, pgd7), x, args.batches)
    log.info("%-22s %8.0f images/s", "clean training", clean)
    log.info("%-22s %8.0f images/s", "PGD-7 training", adversarial)
    log.info("%-22s %8.2f x the time of a clean epoch", "PGD-7 epoch", clean / adversarial)


if __name__ == "__main__":
    main()
