"""One epoch: batches through the training mode's step, with the update every mode shares.

Losses and accuracy counts stay on the device and are read once per epoch (and when a progress bar refreshes):
a per-step ``.item()`` would stall the GPU's queue three times a step (``totals.py``).
"""
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from advbench.attacks.gradients import Passes
from advbench.errors import RunFailed
from advbench.runtime.amp import autocast
from advbench.runtime.distributed import bare
from advbench.training.mode import Batch
from advbench.training.schedules import eps_factor
from advbench.training.totals import FiniteWatch, Totals

REFRESH = 20  # steps between progress-bar refreshes (each reads the running numbers: a host sync)


@dataclass
class Plan:
    """How training runs, whatever the mode: mixed precision, clipping, eps warm-up, progress bars, compilation."""

    amp: str = "off"
    grad_clip: float | None = None
    eps_warmup_epochs: float = 0.0
    progress: bool = False
    compile: bool = False  # the resolved ``compile`` setting: the step runs through the compiled model


def train_epoch(model, loader, mode, task, attack, optimizer, scheduler, scaler, plan: Plan, device,
                epoch: int = 1, desc: str = "train", clean_sample: tuple | None = None) -> dict:
    """Train one pass over ``loader``; return the pass's loss, accuracies, lr and speed. Adversarial-only modes
    see no clean outputs while training: their clean accuracy is measured on ``clean_sample`` (x, targets of
    the training split) at the end of the epoch, where given."""
    model.train()
    net = bare(model)  # attacks and clean predictions use the bare module: no DDP gradient synchronisation
    mode.start_epoch()
    totals, watch, n = Totals(device), FiniteWatch(), 0

    def backward(loss):
        Passes.taken += 1
        scaler.scale(loss).backward()

    def update(loss, after_backward=None):
        watch.add(i, loss)
        optimizer.zero_grad(set_to_none=True)
        backward(loss)
        if after_backward:  # e.g. the embedding-weights recipe adds its adversarial gradient to the clean one
            after_backward()
        if plan.grad_clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradient, not the fp16-scaled one
            torch.nn.utils.clip_grad_norm_(model.parameters(), plan.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

    def check_finite():
        step = watch.first_bad()
        if step is not None:  # the run stops here; last.pt still holds the last good epoch
            raise RunFailed(f"diverged at epoch {epoch} step {step + 1}: the training loss is not finite; "
                            + (f"last.pt keeps epoch {epoch - 1}" if epoch > 1 else "no epoch finished")
                            + " (lower lr, or set grad_clip)")

    start, passes = time.perf_counter(), Passes.taken
    bar = tqdm(loader, desc=desc, leave=False, disable=not (plan.progress and sys.stderr.isatty()))
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), task.to(y, device)
        lr = optimizer.param_groups[0]["lr"]
        scaled = attack and attack.scaled(eps_factor(plan.eps_warmup_epochs, epoch - 1 + i / len(loader)))
        step = mode.step(Batch(
            model, net, task, x, y, attack=_bound(scaled, net), eps=scaled.eps if scaled else 0.0,
            autocast=lambda: autocast(device, plan.amp), update=update, backward=backward))
        totals.add("loss", step.loss, len(x))
        if task.scores_training:
            for kind, outputs in (("clean", step.clean), ("adv", step.adv)):
                if outputs is not None:
                    totals.add(kind, task.correct(outputs, y).sum())
        if len(task.terms) > 1 and step.terms:
            for name, value in step.terms.items():
                totals.add(f"train_{name}", value, len(x))
        n += len(x)
        if i % REFRESH == 0:  # a divergence stops the run within REFRESH steps
            check_finite()
            if not bar.disable:
                seen = totals.read()
                bar.set_postfix(loss=f"{seen['loss'] / n:.3f}", acc=f"{seen.get('clean', 0) / n:.3f}")
    seconds = time.perf_counter() - start
    check_finite()
    sums, n = totals.read(), max(n, 1)
    clean_acc = sums["clean"] / n if "clean" in sums else None
    if clean_acc is None and task.scores_training and clean_sample is not None:
        clean_acc = sample_accuracy(net, task, clean_sample, device, plan.amp)
    return {
        "train_loss": sums["loss"] / n,
        "train_clean_acc": clean_acc,
        "train_adv_acc": sums.get("adv", 0) / n if mode.adversarial and task.scores_training else None,
        **{name: value / n for name, value in sums.items() if name.startswith("train_")},
        "lr": lr,
        "seconds": seconds,
        "images_per_s": n / seconds,
        # backward passes per batch: each example's share of the epoch's cost (fit sums it over the epochs)
        "grad_computations_per_example": (Passes.taken - passes) / max(len(loader), 1),
    }


def sample_accuracy(net, task, sample: tuple, device, amp: str, batch_size: int = 500) -> float:
    """Clean accuracy (eval mode, no grad) of ``net`` on a fixed sample of training examples."""
    from advbench.data.loaders import to_unit
    x, targets = sample
    correct = torch.zeros((), device=device)
    for i in range(0, len(x), batch_size):
        xb = task.trim(to_unit(x[i:i + batch_size])).to(device)
        yb = task.to(task.index(targets, torch.arange(i, min(i + batch_size, len(x)))), device)
        with autocast(device, amp):
            correct += task.correct(task.predict(net, xb), yb).sum()
    return correct.item() / max(len(x), 1)


def _bound(attack, net):
    """``attack`` called on the bare module, keeping its settings visible (``target``, ``eps``)."""
    if attack is None:
        return None

    def run(x, y, objective=None):
        return attack(net, x, y, objective)
    run.target, run.name, run.steps, run.alpha = attack.target, attack.name, attack.steps, attack.alpha
    return run
