"""Gradient attacks in [0,1] pixel space: one PGD loop for every threat model; FGSM and FGM are one step of it."""
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from advbench.threats import L2Threat, LinfThreat

# fp16 gradients of confident examples underflow; scaling the loss (and unscaling the gradient) keeps them.
_FP16_LOSS_SCALE = 2.0**12


@contextmanager
def preserved_modes(model: torch.nn.Module):
    """Restore every sub-module's own train/eval mode on exit (model.train(flag) would flatten them)."""
    modes = [m.training for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode


@contextmanager
def attack_mode(model: torch.nn.Module, bn_mode: str = "eval"):
    """Run the body with the model in ``bn_mode``, parameters frozen and grad enabled; restore all afterwards.

    Works from inside the caller's ``torch.no_grad()`` and ``torch.inference_mode()`` (YOLOv5's val.py and
    Lightning's validation loop run under the latter, which ``enable_grad`` alone does not escape). With
    ``bn_mode="train"`` the batch-norm running statistics the attack's forwards update are put back.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    buffers = [b.detach().clone() for b in model.buffers()] if bn_mode == "train" else None
    with preserved_modes(model), torch.inference_mode(False):
        model.train(bn_mode == "train")
        for p in params:
            p.requires_grad_(False)  # no parameter gradient is computed, so none is left behind
        try:
            with torch.enable_grad():
                yield
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
            if buffers is not None:
                with torch.no_grad():
                    for b, saved in zip(model.buffers(), buffers):
                        b.copy_(saved)


def as_input(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, as a tensor autograd can use: a tensor made under inference mode is copied."""
    return t.clone() if t.is_inference() else t.detach()


def loss_and_grad(model, x: torch.Tensor, loss_fn):
    """Per-example losses ``loss_fn(logits)``, the logits and the gradient of the summed loss in ``x``, in fp32."""
    device = x.device.type
    fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
    x = x.detach().requires_grad_(True)
    logits = model(x).float()  # fp32 loss even under autocast
    losses = loss_fn(logits)
    # Summed, not averaged: a per-example gradient must not shrink with the batch size.
    loss = losses.sum()
    if not loss.requires_grad:  # the output does not depend on x at all: its gradient is zero
        return losses.detach(), logits.detach(), torch.zeros_like(x)
    if not fp16:
        grad = torch.autograd.grad(loss, x)[0]
    else:
        grad = torch.autograd.grad(loss * _FP16_LOSS_SCALE, x, retain_graph=True)[0] / _FP16_LOSS_SCALE
        if not torch.isfinite(grad).all():  # overflow: the unscaled gradient is the safe fallback
            grad = torch.autograd.grad(loss, x)[0]
    return losses.detach(), logits.detach(), grad


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy: the attacks' default loss."""
    return F.cross_entropy(logits, y, reduction="none")


def input_grad(model, x: torch.Tensor, y: torch.Tensor, loss_fn=cross_entropy) -> torch.Tensor:
    """Gradient of the summed ``loss_fn(logits, y)`` with respect to ``x``, kept in fp32 under autocast."""
    return loss_and_grad(model, x, lambda logits: loss_fn(logits, y))[2]


def pgd(model, x, y, threat, steps: int, random_start: bool = True, restarts: int = 1,
        targeted: bool = False, bn_mode: str = "eval", loss_fn=cross_entropy) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) under any threat model; worst case kept over restarts.

    Each restart attacks only the examples no earlier restart has misclassified. Targeted attacks descend the
    loss towards a random wrong class per example. ``loss_fn(logits, y)`` gives per-example losses to ascend
    (TRADES passes its KL, with ``y`` the clean probabilities; restarts then need labels and are not allowed).
    """
    with attack_mode(model, bn_mode):
        x, y = as_input(x), as_input(y)
        x_best = x.clone()
        remaining = torch.arange(len(x), device=x.device)
        for restart in range(restarts):
            xr, yr = x[remaining], y[remaining]
            goal = _random_targets(model, xr, yr) if targeted else yr
            x_adv = threat.init(xr) if random_start else xr.clone()
            for _ in range(steps):
                grad = input_grad(model, x_adv, goal, loss_fn)
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


def fgsm(model, x, y, eps, alpha=None, random_start=False, bn_mode="eval"):
    """FGSM (Goodfellow et al. 2015), Linf: x + eps * sign(grad); from a random start with step alpha (Wong 2020)."""
    threat = LinfThreat(eps, eps if alpha is None else alpha)
    return pgd(model, x, y, threat, 1, random_start, bn_mode=bn_mode)


def fgm(model, x, y, eps, bn_mode="eval"):
    """Fast gradient method (Miyato et al. 2017), L2: x + eps * grad / ||grad||_2 per example."""
    return pgd(model, x, y, L2Threat(eps, eps), 1, random_start=False, bn_mode=bn_mode)
