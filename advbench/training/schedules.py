"""Learning-rate schedules (per iteration) and the optional eps warm-up."""
import math

import torch

SCHEDULES = ("constant", "piecewise", "onecycle", "cosine")


def lr_multiplier(schedule: str, progress: float) -> float:
    """Learning-rate factor at ``progress`` in (0, 1] of training."""
    if schedule == "piecewise":  # Madry et al. / Rice et al.: decay 10x at 50% and 75%
        return 1.0 if progress <= 0.5 else 0.1 if progress <= 0.75 else 0.01
    if schedule == "onecycle":  # Wong et al. 2020: linear up to the peak at 40%, then linear down to 0
        return progress / 0.4 if progress <= 0.4 else max(0.0, (1 - progress) / 0.6)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def make_scheduler(optimizer, schedule: str, total_steps: int):
    """A per-iteration LambdaLR following ``schedule``."""
    # Each step takes the rate at its midpoint, so one-cycle neither starts nor ends on a wasted zero step.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(schedule, min(1.0, (step + 0.5) / total_steps)))


def eps_factor(warmup_epochs: float, epoch_progress: float) -> float:
    """Fraction of eps in use after ``epoch_progress`` epochs: a linear ramp over ``warmup_epochs``."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch_progress / warmup_epochs)
