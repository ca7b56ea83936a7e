"""Catastrophic-overfitting guard (Wong et al. 2020): watch PGD accuracy on a fixed training batch."""
import logging
from pathlib import Path

import torch

from advbench.attacks.spec import make_attack

log = logging.getLogger(__name__)


class OverfittingGuard:
    """After each epoch, PGD accuracy on the same training examples; fires when it collapses."""

    def __init__(self, settings, train: tuple, attack, evaluator, last: Path):
        """``settings``: training.guard; PGD in ``attack``'s norm and eps, judged by ``evaluator``."""
        self.x, self.y = (t[:settings.n_examples] for t in train)
        self.attack = make_attack("pgd", attack.norm, attack.eps, steps=settings.steps, random_start=True,
                                  task=evaluator.task)
        self.max_drop, self.action, self.evaluator = settings.max_drop, settings.action, evaluator
        self.history, self.best, self.fired_at = [], -1.0, None
        self.last, self.good_epoch = last, None  # last.pt holds the last good epoch when the guard fires

    def measure(self, model) -> float:
        """PGD's robust accuracy (the task's headline) on the fixed training examples."""
        summary = self.evaluator.evaluate(model, self.x, self.y, {"pgd": self.attack})
        return summary[self.evaluator.task.metrics[1]]

    def check(self, model, optimizer, epoch: int) -> bool:
        """Record this epoch's PGD accuracy; True when training must end (collapse)."""
        acc = self.measure(model)
        self.history.append(acc)
        if acc < self.best - self.max_drop:
            self.fired_at = epoch
            log.warning("catastrophic overfitting at epoch %d: PGD-%d accuracy on a fixed training batch fell "
                        "from %.3f to %.3f; %s", epoch, self.attack.steps, self.best, acc,
                        "rolling back to the last good epoch" if self.action == "rollback" else "stopping")
            if self.action == "rollback" and self.good_epoch is not None:
                good = torch.load(self.last, map_location="cpu", weights_only=True)
                model.load_state_dict(good["state_dict"])
                optimizer.load_state_dict(good["optimizer"])
            return True
        self.best = max(self.best, acc)
        self.good_epoch = epoch
        return False

    def state(self) -> dict:
        """What a resume needs: the accuracy history (the last good weights are last.pt's own)."""
        return {"history": self.history, "best": self.best, "good_epoch": self.good_epoch}

    def restore(self, state: dict) -> None:
        """Continue from ``state()``; the resumed last.pt is the last good epoch."""
        self.history, self.best, self.good_epoch = list(state["history"]), state["best"], state["good_epoch"]

    def report(self) -> dict:
        """What the guard saw, for results.json."""
        rolled_back = self.fired_at is not None and self.action == "rollback"
        return {"fired": self.fired_at is not None, "epoch": self.fired_at, "action": self.action,
                "pgd_acc": self.history, "rolled_back_to": self.good_epoch if rolled_back else None}
