"""Catastrophic-overfitting guard (Wong et al. 2020): watch PGD accuracy on a fixed training batch."""
import logging
from pathlib import Path

import torch

from advbench.attack_spec import Attack
from advbench.robust_eval import evaluate

log = logging.getLogger(__name__)


class OverfittingGuard:
    """After each epoch, PGD accuracy on the same training examples; fires when it collapses."""

    def __init__(self, cfg, train: tuple, eps: float, norm: str, device, last: Path):
        g = cfg.training.guard
        self.x, self.y = train[0][:g.n_examples], train[1][:g.n_examples]
        self.attack = Attack("pgd", norm, eps, 2.5 * eps / g.steps, steps=g.steps, random_start=True)
        self.max_drop, self.action, self.device, self.amp = g.max_drop, g.action, device, cfg.amp
        self.history, self.best, self.fired_at = [], -1.0, None
        self.last, self.good_epoch = last, None  # last.pt holds the last good epoch when the guard fires

    def check(self, model, optimizer, epoch: int) -> bool:
        """Record this epoch's PGD accuracy; True when training must end (collapse)."""
        acc = evaluate(model, self.x, self.y, {"pgd": self.attack}, self.device, self.amp)["robust_acc"]
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
