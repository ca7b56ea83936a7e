"""Attack and training throughput, measured side by side in one process (a benchmark, not a test).

Prints images/s of advbench's PGD-10, of its floor (10 bare forward and input-gradient passes) and of
torchattacks' PGD-10 (if installed) on the same model and batch (with --compile, also advbench's PGD-10 on the
compiled model), and the cost of a PGD-7 adversarial training step relative to a clean one.

    python benchmarks/attack_speed.py [--batches 20] [--batch-size 256] [--amp bf16] [--compile]
"""
import argparse
import logging
import time

import torch
import torch.nn.functional as F

from advbench.attacks import Attack
from advbench.models import PreActResNet18, small_cnn
from advbench.runtime.amp import autocast

log = logging.getLogger("benchmark")


def images_per_s(fn, x, batches: int) -> float:
    """Throughput of ``fn(x)`` over ``batches`` calls, after one warm-up call (the device's queue drained)."""
    fn(x)
    sync(x.device)
    start = time.perf_counter()
    for _ in range(batches):
        fn(x)
    sync(x.device)
    return batches * len(x) / (time.perf_counter() - start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor(model, x, y, steps: int, amp: str):
    """The bare cost of a PGD attack: ``steps`` forward and input-gradient passes, nothing else."""
    with torch.enable_grad():
        for _ in range(steps):
            xg = x.detach().requires_grad_(True)
            with autocast(x.device, amp):
                loss = F.cross_entropy(model(xg), y)
            torch.autograd.grad(loss, xg)


def train_step(model, optimizer, x, y, attack=None, amp="off"):
    with autocast(x.device, amp):
        x_in = attack(model, x, y) if attack else x
        loss = F.cross_entropy(model(x_in), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 CPU, 512 CUDA")
    parser.add_argument("--amp", default="off", help="off | bf16 | fp16 (autocast for every contender)")
    parser.add_argument("--compile", action="store_true", help="also advbench's PGD-10 on torch.compile(model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    # CPU: small_cnn on Fashion-MNIST shapes; CUDA: PreActResNet18 on CIFAR shapes (a small model only measures
    # kernel launches there). channels_last as advbench runs it; every contender attacks this same model.
    shape, build = ((3, 32, 32), PreActResNet18) if cuda else ((1, 28, 28), small_cnn)
    batch_size = args.batch_size or (512 if cuda else 256)
    model = build(shape, 10, [0.5] * shape[0], [0.25] * shape[0]).to(device, memory_format=torch.channels_last).eval()
    x, y = torch.rand(batch_size, *shape, device=device), torch.randint(0, 10, (batch_size,), device=device)
    eps, alpha = 0.1, 0.025
    log.info("%s, batch %d, amp %s, %s", build.__name__, batch_size, args.amp,
             torch.cuda.get_device_name() if cuda else "CPU")
    ours = Attack("pgd", "linf", eps, alpha, steps=10, random_start=True)

    def attack_with(net):
        def run(b):
            with autocast(device, args.amp):
                return ours(net, b, y)
        return run
    rates = {"advbench PGD-10": images_per_s(attack_with(model), x, args.batches),
             "10 bare fwd+input-grad": images_per_s(lambda b: floor(model, b, y, 10, args.amp), x, args.batches)}
    if args.compile:
        rates["advbench PGD-10 compiled"] = images_per_s(attack_with(torch.compile(model)), x, args.batches)
    try:
        import torchattacks
        theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=10, random_start=True)
        rates["torchattacks PGD-10"] = images_per_s(lambda b: theirs(b, y), x, args.batches)
    except ImportError:
        log.info("torchattacks is not installed: pip install torchattacks (or make bench)")
    for name, rate in rates.items():
        log.info("%-26s %8.0f images/s", name, rate)
    base = rates["advbench PGD-10"]
    log.info("%-26s %8.2f x", "advbench / bare passes", base / rates["10 bare fwd+input-grad"])
    if "advbench PGD-10 compiled" in rates:
        log.info("%-26s %8.2f x", "compiled / eager", rates["advbench PGD-10 compiled"] / base)
    if "torchattacks PGD-10" in rates:
        log.info("%-26s %8.2f x", "advbench / torchattacks", base / rates["torchattacks PGD-10"])

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pgd7 = Attack("pgd", "linf", eps, 2.5 * eps / 7, steps=7, random_start=True)
    clean = images_per_s(lambda b: train_step(model, optimizer, b, y, amp=args.amp), x, args.batches)
    adversarial = images_per_s(lambda b: train_step(model, optimizer, b, y, pgd7, args.amp), x, args.batches)
    log.info("%-26s %8.0f images/s", "clean training", clean)
    log.info("%-26s %8.0f images/s", "PGD-7 training", adversarial)
    log.info("%-26s %8.2f x the time of a clean step", "PGD-7 step", clean / adversarial)


if __name__ == "__main__":
    main()
