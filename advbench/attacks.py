"""Gradient attacks in [0,1] pixel space: one PGD loop for every threat model; FGSM and FGM are one step of it."""
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from advbench.eps import check_budget, parse_eps
from advbench.errors import AdvbenchError
from advbench.threats import THREATS

# fp16 gradients of confident examples underflow; scaling the loss (and unscaling the gradient) keeps them.
_FP16_LOSS_SCALE = 2.0**12


@contextmanager
def attack_mode(model: torch.nn.Module, bn_mode: str = "eval"):
    """Run the body with the model in ``bn_mode``, parameters frozen and grad enabled; restore all afterwards."""
    modes = [m.training for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.train(bn_mode == "train")
    for p in params:
        p.requires_grad_(False)  # no parameter gradient is computed, so none is left behind
    try:
        with torch.enable_grad():  # attacks also run from inside the caller's torch.no_grad()
            yield
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def input_grad(model, x: torch.Tensor, y: torch.Tensor, loss_fn=None) -> torch.Tensor:
    """Gradient of the summed loss with respect to ``x``, kept in fp32 under autocast."""
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
    device = x.device.type
    fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
    x = x.detach().requires_grad_(True)
    # Summed, not averaged: a per-example gradient must not shrink with the batch size. fp32 reduction.
    loss = loss_fn(model(x).float(), y)
    if not fp16:
        return torch.autograd.grad(loss, x)[0]
    grad = torch.autograd.grad(loss * _FP16_LOSS_SCALE, x, retain_graph=True)[0] / _FP16_LOSS_SCALE
    if not torch.isfinite(grad).all():  # overflow: the unscaled gradient is the safe fallback
        grad = torch.autograd.grad(loss, x)[0]
    return grad


def pgd(model, x, y, threat, steps: int, random_start: bool = True, restarts: int = 1,
        targeted: bool = False, bn_mode: str = "eval") -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) under any threat model; worst case kept over restarts.

    Each restart attacks only the examples no earlier restart has misclassified. Targeted attacks descend the
    loss towards a random wrong class per example.
    """
    with attack_mode(model, bn_mode):
        x, y = x.detach(), y.detach()
        x_best = x.clone()
        remaining = torch.arange(len(x), device=x.device)
        for restart in range(restarts):
            xr, yr = x[remaining], y[remaining]
            goal = _random_targets(model, xr, yr) if targeted else yr
            x_adv = threat.init(xr) if random_start else xr.clone()
            for _ in range(steps):
                grad = input_grad(model, x_adv, goal)
                x_adv = threat.project(threat.step(x_adv, -grad if targeted else grad), xr)
            x_best[remaining] = x_adv
            if restart == restarts - 1:
                break
            with torch.no_grad():
                remaining = remaining[model(x_adv).argmax(1) == yr]
            if remaining.numel() == 0:
                break
        return x_best


def _random_targets(model, x, y):
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    return (y + torch.randint(1, n_classes, y.shape, device=y.device)) % n_classes


@dataclass
class Attack:
    """A configured attack; ``attack(model, x, y)`` returns adversarial examples of ``x``."""

    name: str
    norm: str
    eps: float
    alpha: float
    steps: int = 1
    random_start: bool = False
    restarts: int = 1
    targeted: bool = False
    bn_mode: str = "eval"

    def __call__(self, model, x, y):
        threat = THREATS[self.norm](self.eps, self.alpha)
        return pgd(model, x, y, threat, self.steps, self.random_start, self.restarts, self.targeted,
                   self.bn_mode)


def fgsm(model, x, y, eps, alpha=None, random_start=False, bn_mode="eval"):
    """FGSM (Goodfellow et al. 2015), Linf: x + eps * sign(grad); from a random start with step alpha (Wong 2020)."""
    alpha = eps if alpha is None else alpha
    return Attack("fgsm", "linf", eps, alpha, 1, random_start, bn_mode=bn_mode)(model, x, y)


def fgm(model, x, y, eps, bn_mode="eval"):
    """Fast gradient method (Miyato et al. 2017), L2: x + eps * grad / ||grad||_2 per example."""
    return Attack("fgm", "l2", eps, eps, 1, False, bn_mode=bn_mode)(model, x, y)


def _default_alpha(name: str, eps: float, steps: int, random_start: bool) -> float:
    if name == "fgsm":
        return 1.25 * eps if random_start else eps  # Fast-AT's step from a random start
    if name == "fgm":
        return eps
    return 2.5 * eps / steps  # Madry et al.: enough to cross the ball and back


def build_attack(spec, run_eps) -> Attack | None:
    """Build an Attack from an attack config; its eps falls back to the run's top-level ``eps``."""
    name = str(spec.name)
    if name == "none":
        return None
    norm = {"fgsm": "linf", "fgm": "l2"}.get(name, str(spec.norm))
    if name in ("fgsm", "fgm") and str(spec.norm) != norm:
        raise AdvbenchError(f"attack.norm={spec.norm} does not apply to {name}, which is {norm} by definition; "
                            "use pgd for other norms")
    key = "eps" if spec.eps is None else f"attack {name} eps"
    eps = check_budget(parse_eps(run_eps if spec.eps is None else spec.eps, key), norm, key)
    steps = 1 if name in ("fgsm", "fgm") else int(spec.steps)
    if steps < 1 or spec.restarts < 1:
        raise AdvbenchError(f"attack {name}: steps and restarts must be >= 1, got {steps} and {spec.restarts}")
    random_start = bool(spec.random_start) and name != "fgm"
    alpha = (_default_alpha(name, eps, steps, random_start) if spec.alpha is None
             else parse_eps(spec.alpha, f"attack {name} alpha"))
    return Attack(name, norm, eps, alpha, steps, random_start, int(spec.restarts), bool(spec.targeted),
                  str(spec.bn_mode))
