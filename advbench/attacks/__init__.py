"""Attacks: threat models (``threats``), the shared gradient engine, one PGD loop, APGD, and ``Attack`` objects
built from the table of attack kinds (``spec``)."""
from advbench.attacks.apgd import apgd
from advbench.attacks.gradients import as_input, attack_mode, loss_and_grad, preserved_modes
from advbench.attacks.pgd import pgd
from advbench.attacks.spec import KINDS, Attack, build_attack, make_attack
from advbench.attacks.threats import THREATS, L2Threat, LinfThreat


def fgsm(model, x, y, eps: float, alpha: float | None = None, random_start: bool = False, bn_mode: str = "eval"):
    """FGSM (Goodfellow et al. 2015), Linf: x + eps * sign(grad), one step of PGD; from a random start with step
    alpha (Wong et al. 2020)."""
    return make_attack("fgsm", eps=eps, alpha=eps if alpha is None else alpha, random_start=random_start,
                       bn_mode=bn_mode)(model, x, y)


def fgm(model, x, y, eps: float, bn_mode: str = "eval"):
    """FGM (Miyato et al. 2017), L2: x + eps * grad / ||grad||_2 per example, one step of PGD."""
    return make_attack("fgm", eps=eps, bn_mode=bn_mode)(model, x, y)


__all__ = ["KINDS", "THREATS", "Attack", "L2Threat", "LinfThreat", "apgd", "as_input", "attack_mode",
           "build_attack", "fgm", "fgsm", "loss_and_grad", "make_attack", "pgd", "preserved_modes"]
