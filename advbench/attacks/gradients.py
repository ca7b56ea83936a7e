"""The gradient engine every attack shares: the model's modes and parameters while attacking, and the input
gradient of a per-example objective, in fp32 and safe from fp16 underflow."""
from contextlib import contextmanager

import torch
from torch.utils._pytree import tree_map

from advbench.errors import AdvbenchError

# fp16 gradients of confident examples underflow; scaling the loss (and unscaling the gradient) keeps them.
FP16_LOSS_SCALE = 2.0**12


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


def as_input(t):
    """``t`` detached, as a tensor autograd can use: a tensor made under inference mode is copied."""
    return tree_map(lambda v: (v.clone() if v.is_inference() else v.detach()) if torch.is_tensor(v) else v, t)


def loss_and_grad(model, x: torch.Tensor, objective):
    """Per-example ``objective(model(x))``, the outputs and the gradient of the summed objective in ``x``.

    Summed, not averaged: a per-example gradient must not shrink with the batch size. Objectives compute in
    fp32 even under autocast; with fp16 the loss is scaled before the backward pass and the gradient unscaled.
    """
    device = x.device.type
    fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
    x = as_input(x).requires_grad_(True)
    outputs = model(x)
    losses = objective(outputs)
    loss = losses.sum()
    detached = outputs.detach() if hasattr(outputs, "detach") else tree_map(
        lambda v: v.detach() if torch.is_tensor(v) else v, outputs)
    if not loss.requires_grad:  # the output does not depend on x at all: its gradient is zero
        return losses.detach(), detached, torch.zeros_like(x)
    if not fp16:
        grad = torch.autograd.grad(loss, x)[0]
    else:  # no retained graph: an overflow (rare) pays a second forward pass instead of every step a kept graph
        grad = torch.autograd.grad(loss * FP16_LOSS_SCALE, x)[0] / FP16_LOSS_SCALE
        if not torch.isfinite(grad).all():  # overflow: the unscaled gradient is the safe fallback
            grad = torch.autograd.grad(objective(model(x)).sum(), x)[0]
    check_half(x, grad)
    return losses.detach(), detached, grad


def check_half(x: torch.Tensor, grad: torch.Tensor) -> None:
    """A model run in ``.half()`` (as YOLO's val.py does) gives all-zero input gradients: refuse to attack with
    them, rather than report a robustness that is only underflow."""
    if x.dtype == torch.float16 and not grad.any():
        raise AdvbenchError("the input gradient is exactly zero with fp16 inputs (a model in .half()): gradient "
                            "attacks cannot work there; run the model in bf16 (amp=bf16, or autocast with "
                            "torch.bfloat16) or in fp32")


def terms_grad(model, x: torch.Tensor, terms_fn, weights: dict) -> torch.Tensor:
    """sum_t w_t g_t / ||g_t||_2 (per example) of the named terms ``terms_fn(model(x))``: one forward pass, one
    backward pass per term."""
    x = x.detach().requires_grad_(True)
    terms = terms_fn(model(x))
    shape = (-1,) + (1,) * (x.dim() - 1)
    total = torch.zeros_like(x)
    for name, weight in weights.items():
        if not weight:
            continue
        if name not in terms:
            raise AdvbenchError(f"attack.terms: this model has no {name} loss term; it has {', '.join(terms)}")
        grad = torch.autograd.grad(terms[name].float().sum(), x, retain_graph=True, allow_unused=True)[0]
        if grad is not None:
            total += weight * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
    check_half(x, total)
    return total
