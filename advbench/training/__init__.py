"""Training: modes (one small class each), the epoch loop, the fit loop with validation and the guard."""
from advbench.training.fit import Recipe, fit
from advbench.training.loop import Plan, train_epoch
from advbench.training.mode import Batch, Mode, Step, Term
from advbench.training.modes import MODES, build_mode

__all__ = ["MODES", "Batch", "Mode", "Plan", "Recipe", "Step", "Term", "build_mode", "fit", "train_epoch"]
