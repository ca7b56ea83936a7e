"""The reference AutoAttack (fra31/auto-attack, packaged on PyPI as pyautoattack), run unchanged as one attack, so
that its per-example flags sit beside advbench's own in the same evaluation (eval=autoattack_reference)."""
import logging

import torch

from advbench.attacks.gradients import as_input, attack_mode
from advbench.errors import AdvbenchError

log = logging.getLogger(__name__)


def run_reference(model, x, y, norm: str, eps: float, version: str = "standard", seed: int = 0) -> torch.Tensor:
    """The reference AutoAttack as its README runs it, on the model as it is (its mode, its parameters' flags):
    the adversarial examples it returns (the clean input where it failed)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise AdvbenchError("the reference AutoAttack needs the pyautoattack package: pip install "
                            "'advbench[autoattack]'") from None
    adversary = AutoAttack(model, eps=eps, norm={"linf": "Linf", "l2": "L2"}[norm], version=version, seed=seed,
                           device=x.device)
    adversary.verbose = log.isEnabledFor(logging.DEBUG)
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv.to(x.dtype)


def reference_autoattack(model, x, y, norm: str, eps: float, version: str = "standard", seed: int = 0,
                         bn_mode: str = "eval") -> torch.Tensor:
    """Standard AutoAttack by its authors' code (Croce & Hein 2020), Linf or L2: APGD-CE, APGD-T, FAB-T, Square on
    the examples each leaves; the adversarial examples it returns (the clean input where it failed). Run inside
    ``attack_mode``, as every advbench attack: the model's modes, flags and buffers come back as they were."""
    with attack_mode(model, bn_mode):
        return run_reference(model, as_input(x), as_input(y), norm, eps, version, seed)
