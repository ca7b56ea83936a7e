"""The gradient engine every attack shares: the model's modes and parameters while attacking, and the input
gradient of a per-example objective, in fp32 and safe from fp16 underflow."""
from contextlib import contextmanager

import torch
from torch.utils._pytree import tree_map

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
    x = x.detach().requires_grad_(True)
    outputs = model(x)
    losses = objective(outputs)
    loss = losses.sum()
    detached = tree_map(lambda v: v.detach() if torch.is_tensor(v) else v, outputs)
    if not loss.requires_grad:  # the output does not depend on x at all: its gradient is zero
        return losses.detach(), detached, torch.zeros_like(x)
    if not fp16:
        grad = torch.autograd.grad(loss, x)[0]
    else:
        grad = torch.autograd.grad(loss * _FP16_LOSS_SCALE, x, retain_graph=True)[0] / _FP16_LOSS_SCALE
        if not torch.isfinite(grad).all():  # overflow: the unscaled gradient is the safe fallback
            grad = torch.autograd.grad(loss, x)[0]
    return losses.detach(), detached, grad
