"""One epoch of (adversarial) training: attack, forward, loss of the training mode, AMP-aware update."""
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from advbench.amp import autocast
from advbench.evaluate import predict


def clean_loss(model, x, x_adv, y, cfg):
    """Standard training: cross-entropy on clean examples."""
    logits = model(x)
    return F.cross_entropy(logits.float(), y), logits, None


def adversarial_loss(model, x, x_adv, y, cfg):
    """Madry et al. 2018: cross-entropy on adversarial examples only."""
    logits_adv = model(x_adv)
    return F.cross_entropy(logits_adv.float(), y), None, logits_adv


def mixed_loss(model, x, x_adv, y, cfg):
    """Goodfellow et al. 2015: (1 - w) * clean + w * adversarial cross-entropy."""
    # One forward over both halves: batch norm sees the mixed batch, as the mixed objective's data.
    logits, logits_adv = model(torch.cat([x, x_adv])).chunk(2)
    w = cfg.training.adv_weight
    loss = (1 - w) * F.cross_entropy(logits.float(), y) + w * F.cross_entropy(logits_adv.float(), y)
    return loss, logits, logits_adv


MODES = {"standard": clean_loss, "adversarial": adversarial_loss, "mixed": mixed_loss}


def lr_multiplier(schedule: str, progress: float) -> float:
    """Learning-rate factor at ``progress`` in (0, 1] of training."""
    if schedule == "piecewise":  # Madry et al. / Rice et al.: decay 10x at 50% and 75%
        return 1.0 if progress <= 0.5 else 0.1 if progress <= 0.75 else 0.01
    if schedule == "onecycle":  # Wong et al. 2020: linear up to the peak at 40%, then linear down to 0
        return progress / 0.4 if progress <= 0.4 else max(0.0, (1 - progress) / 0.6)
    return 1.0


def make_scheduler(optimizer, schedule: str, total_steps: int):
    """A per-iteration LambdaLR following ``schedule``."""
    # Each step takes the rate at its midpoint, so one-cycle neither starts nor ends on a wasted zero step.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(schedule, min(1.0, (step + 0.5) / total_steps)))


def train_epoch(model, loader, optimizer, scheduler, scaler, attack, cfg, device, desc="train") -> dict:
    """Train one pass over ``loader``; return the epoch's loss, accuracies, lr and speed."""
    loss_fn = MODES[cfg.training.name]
    model.train()
    totals = {"loss": 0.0, "clean": 0, "adv": 0, "n": 0}
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not (cfg.progress and sys.stderr.isatty()))
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lr = optimizer.param_groups[0]["lr"]
        with autocast(device, cfg.amp):
            # The attack sees the model in its own bn_mode (eval by default) and leaves no parameter grads.
            x_adv = attack(model, x, y) if cfg.training.name != "standard" else None
            loss, logits, logits_adv = loss_fn(model, x, x_adv, y, cfg)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradient, not the fp16-scaled one
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        if logits is None:  # adversarial mode: clean accuracy costs one extra no-grad forward
            logits = predict(model, x, device, cfg.amp, logits=True)
        totals["loss"] += loss.item() * len(y)
        totals["clean"] += (logits.argmax(1) == y).sum().item()
        if logits_adv is not None:
            totals["adv"] += (logits_adv.argmax(1) == y).sum().item()
        totals["n"] += len(y)
        bar.set_postfix(loss=f"{totals['loss'] / totals['n']:.3f}", acc=f"{totals['clean'] / totals['n']:.3f}")
    seconds = time.perf_counter() - start
    n = max(totals["n"], 1)
    return {
        "train_loss": totals["loss"] / n,
        "train_clean_acc": totals["clean"] / n,
        "train_adv_acc": totals["adv"] / n if cfg.training.name != "standard" else None,
        "lr": lr,
        "seconds": seconds,
        "images_per_s": totals["n"] / seconds,
    }
