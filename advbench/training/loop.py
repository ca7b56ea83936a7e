"""One epoch: batches through the training mode's step, with the update every mode shares."""
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from advbench.errors import RunFailed
from advbench.runtime.amp import autocast
from advbench.runtime.distributed import bare
from advbench.training.mode import Batch
from advbench.training.schedules import eps_factor


@dataclass
class Plan:
    """How training runs, whatever the mode: mixed precision, clipping, eps warm-up, progress bars."""

    amp: str = "off"
    grad_clip: float | None = None
    eps_warmup_epochs: float = 0.0
    progress: bool = False


def train_epoch(model, loader, mode, task, attack, optimizer, scheduler, scaler, plan: Plan, device,
                epoch: int = 1, desc: str = "train") -> dict:
    """Train one pass over ``loader``; return the pass's loss, accuracies, lr and speed."""
    model.train()
    net = bare(model)  # attacks and clean predictions use the bare module: no DDP gradient synchronisation
    mode.start_epoch()
    totals = {"loss": 0.0, "clean": 0, "adv": 0, "n": 0}
    term_sums = {}  # a task with several loss terms (detection) logs each

    def update(loss, after_backward=None):
        if not torch.isfinite(loss.detach()).all():  # stop before a non-finite loss reaches the weights
            raise RunFailed(f"diverged at epoch {epoch} step {i + 1}: the training loss is "
                            f"{loss.detach().float().sum().item()}; "
                            + (f"last.pt keeps epoch {epoch - 1}" if epoch > 1 else "no epoch finished")
                            + " (lower lr, or set grad_clip)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if after_backward:  # e.g. the embedding-weights recipe adds its adversarial gradient to the clean one
            after_backward()
        if plan.grad_clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradient, not the fp16-scaled one
            torch.nn.utils.clip_grad_norm_(model.parameters(), plan.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not (plan.progress and sys.stderr.isatty()))
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), task.to(y, device)
        lr = optimizer.param_groups[0]["lr"]
        scaled = attack and attack.scaled(eps_factor(plan.eps_warmup_epochs, epoch - 1 + i / len(loader)))
        step = mode.step(Batch(
            model, net, task, x, y, attack=_bound(scaled, net), eps=scaled.eps if scaled else 0.0,
            autocast=lambda: autocast(device, plan.amp), update=update,
            backward=lambda loss: scaler.scale(loss).backward()))
        if task.scores_training:
            clean = step.clean
            if clean is None:  # adversarial-only modes: clean accuracy costs one extra no-grad forward
                with autocast(device, plan.amp):
                    clean = task.predict(net, x)
            totals["clean"] += task.correct(clean, y).sum().item()
            if step.adv is not None:
                totals["adv"] += task.correct(step.adv, y).sum().item()
        totals["loss"] += step.loss.item() * len(x)
        totals["n"] += len(x)
        if len(task.terms) > 1 and step.terms:
            for name, value in step.terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + value.item() * len(x)
        bar.set_postfix(loss=f"{totals['loss'] / totals['n']:.3f}", acc=f"{totals['clean'] / totals['n']:.3f}")
    seconds = time.perf_counter() - start
    n = max(totals["n"], 1)
    return {
        "train_loss": totals["loss"] / n,
        "train_clean_acc": totals["clean"] / n if task.scores_training else None,
        "train_adv_acc": totals["adv"] / n if mode.adversarial and task.scores_training else None,
        **{f"train_{name}": value / n for name, value in term_sums.items()},
        "lr": lr,
        "seconds": seconds,
        "images_per_s": totals["n"] / seconds,
    }


def _bound(attack, net):
    """``attack`` called on the bare module, keeping its settings visible (``target``, ``eps``)."""
    if attack is None:
        return None

    def run(x, y, objective=None):
        return attack(net, x, y, objective)
    run.target, run.name = attack.target, attack.name
    return run
