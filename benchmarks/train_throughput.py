"""advbench's training epoch beside a minimal hand-written loop of the same recipe (a benchmark, not a test).

In one process, on the same model, data, batch size, mixed precision and memory format: images/s of
``advbench.training.train_epoch`` (the loop every run uses: Fast-AT FGSM-RS, and PGD-7) against a 40-line loop
written the way fast_adversarial's train_fgsm.py is, with the data already on the device. advbench runs as a run
does with ``compile`` (default auto: compiled in batch-size buckets on CUDA, eager on the CPU); the hand-written
loop runs eagerly and, where advbench compiles, also under a plain ``torch.compile``. The loops alternate epoch by
epoch so that clock and thermal drift fall on all. CPU: small_cnn on Fashion-MNIST shapes; CUDA: PreActResNet18 on
CIFAR shapes in bf16.

    python benchmarks/train_throughput.py [--epochs 2] [--n 10000] [--compile auto|true|false]
"""
import argparse
import logging

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timing import timed  # benchmarks/timing.py

from advbench.attacks import Attack
from advbench.config import TrainingConf
from advbench.data.loaders import TensorLoader
from advbench.evaluation import Evaluator
from advbench.models import PreActResNet18, small_cnn
from advbench.runtime.amp import autocast
from advbench.runtime.compiled import resolve_compile
from advbench.tasks.classification import Classification
from advbench.training import MODES, Plan, train_epoch
from advbench.training.schedules import make_scheduler

log = logging.getLogger("benchmark")


def hand_written_epoch(model, x, y, batch_size, eps, alpha, steps, optimizer, device, amp):
    """The recipe as researchers write it: data on the device, attack in eval mode, one update per batch."""
    perm = torch.randperm(len(x), device=device)
    total = torch.zeros((), device=device)
    for i in range(0, len(x), batch_size):
        idx = perm[i:i + batch_size]
        xb, yb = x[idx].float().div_(255), y[idx]
        model.eval()
        delta = torch.empty_like(xb).uniform_(-eps, eps)
        delta = ((xb + delta).clamp(0, 1) - xb)
        for _ in range(steps):
            delta.requires_grad_(True)
            with autocast(device, amp):
                loss = F.cross_entropy(model(xb + delta), yb)
            grad, = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
            delta = (xb + delta).clamp(0, 1) - xb
        model.train()
        with autocast(device, amp):
            loss = F.cross_entropy(model(xb + delta), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return total.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs of each loop (after one warm-up)")
    parser.add_argument("--n", type=int, default=None, help="training images (default 10000 CPU, 50000 CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 CPU, 512 CUDA")
    parser.add_argument("--amp", default=None, help="off | bf16 | fp16 (default off CPU, bf16 CUDA)")
    parser.add_argument("--compile", nargs="?", const="true", default="auto", choices=("auto", "true", "false"),
                        help="advbench's compile setting (default auto: on with CUDA); when on, the hand-written "
                             "loop also runs compiled")
    parser.add_argument("--recipes", default="fast,pgd7")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    n, batch_size = args.n or (50000 if cuda else 10000), args.batch_size or (512 if cuda else 256)
    amp = args.amp or ("bf16" if cuda else "off")
    shape, build = ((3, 32, 32), PreActResNet18) if cuda else ((1, 28, 28), small_cnn)
    mean, std = [0.5] * shape[0], [0.25] * shape[0]
    torch.manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    x_dev, y_dev = x.to(device), y.to(device)
    task, eps = Classification(10), 8 / 255
    compiled = resolve_compile({"true": True, "false": False}.get(args.compile, "auto"), device)
    log.info("%s, %d images %s, batch %d, amp %s, %s, advbench %s", build.__name__, n, shape, batch_size, amp,
             torch.cuda.get_device_name() if cuda else "CPU", "compiled" if compiled else "eager")
    recipes = {"fast": ("fast", Attack("fgsm", "linf", eps, 1.25 * eps, steps=1, random_start=True), 1),
               "pgd7": ("adversarial", Attack("pgd", "linf", eps, eps / 4, steps=7, random_start=True), 7)}
    for key in args.recipes.split(","):
        mode_name, attack, steps = recipes[key]
        models = [build(shape, 10, mean, std).to(device, memory_format=torch.channels_last)
                  for _ in range(3 if compiled else 2)]
        for model in models[1:]:
            model.load_state_dict(models[0].state_dict())
        # advbench's model as fit() runs it; the hand-written loop's as its author would: eager, torch.compile
        runs = [Evaluator(task, device, amp, batch_size).compiled(models[0], batch_size, 2 * batch_size)
                if compiled else models[0], models[1], *(torch.compile(m) for m in models[2:])]
        optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for m in models]
        mode = MODES[mode_name](OmegaConf.structured(TrainingConf(name=mode_name)))
        loader = TensorLoader(x_dev, y_dev, batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                              device=device)
        scheduler = make_scheduler(optimizers[0], "constant", 10 ** 9)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        loops = [lambda: train_epoch(runs[0], loader, mode, task, attack, optimizers[0], scheduler, scaler,
                                     Plan(amp=amp, compile=compiled), device)]
        loops += [lambda i=i: hand_written_epoch(runs[i], x_dev, y_dev, batch_size, eps, attack.alpha, steps,
                                                 optimizers[i], device, amp) for i in range(1, len(runs))]
        for loop in loops:  # warm-up: kernels chosen, compiled graphs built (the partial last batch's too)
            loop()
        seconds = [0.0] * len(loops)
        for _ in range(args.epochs):
            for i, loop in enumerate(loops):
                seconds[i] += timed(loop, device)[1]
        rates = [args.epochs * n / s for s in seconds]
        line = f"{key:<5} advbench{' compiled' if compiled else ''} {rates[0]:9.0f} images/s   hand-written eager " \
               f"{rates[1]:9.0f} images/s   ratio {rates[0] / rates[1]:.2f}"
        if compiled:
            line += f"   hand-written compiled {rates[2]:9.0f} images/s   ratio {rates[0] / rates[2]:.2f}"
        log.info("%s", line)


if __name__ == "__main__":
    main()
