"""The gradient engine every attack shares: the model's modes and parameters while attacking, and the input
gradient of a per-example objective, in fp32 and safe from fp16 underflow."""
import copy
from contextlib import contextmanager

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from advbench.attacks.grayscale_conv import fast_input_grad
from advbench.attacks.pool_first import pool_first
from advbench.errors import AdvbenchError

# fp16 gradients of confident examples underflow. Where the outputs are tensors of one row per example, each
# example's output gradient is scaled to a largest entry of 1 (fp32 -> fp16 at the outputs is where it underflows);
# other outputs (a detector's own structures) take this one scale for all.
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


def _normal_copy(t: torch.Tensor) -> torch.Tensor:
    """A normal (autograd-usable) copy of an inference tensor."""
    with torch.inference_mode(False):
        return t.clone()


_HOLDERS = (torch.Tensor, list, tuple, dict)  # what can hold a tensor that autograd would save


def _without_inference(value, depth: int = 0):
    """``value`` with its inference tensors replaced by normal copies (containers rebuilt, never changed in
    place), or None when it holds none: then nothing is copied."""
    if isinstance(value, torch.Tensor):  # a parameter is never copied: the attack must see the model's own weights
        return _normal_copy(value) if value.is_inference() and not isinstance(value, torch.nn.Parameter) else None
    if depth > 3 or not isinstance(value, _HOLDERS):
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value)
    found = {k: new for k, v in items
             if isinstance(v, _HOLDERS) and (new := _without_inference(v, depth + 1)) is not None}
    if not found:
        return None
    if isinstance(value, tuple):
        merged = [found.get(i, v) for i, v in enumerate(value)]
        return type(value)(*merged) if hasattr(value, "_fields") else type(value)(merged)
    fresh = copy.copy(value)  # the same list or dict type, a new object: the cached original stays untouched
    for k, new in found.items():
        fresh[k] = new
    return fresh


# What every nn.Module holds (parameters, sub-modules, hook tables): never a cache, so not walked; buffers apart.
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module())) - {"training"}


@contextmanager
def normal_caches(model: torch.nn.Module):
    """Run the body with every inference tensor the model's modules hold (attributes, lists, tuples and dicts of
    tensors, buffers, parameters) replaced by a normal copy; the very originals are put back on exit.

    A cache built by a forward under ``torch.inference_mode()`` (YOLOv5's ``Detect.grid`` and ``anchor_grid``,
    positional tables, masks) holds inference tensors, which autograd cannot save; so does every parameter of a
    model built there (YOLOv5's ``val.run`` loads its weights under inference mode). The attack's forwards use
    the copies. A model holding none pays one walk over its modules' attributes, and no copy.
    """
    swapped, copies = [], {}  # (dict, key, original, copy); a parameter shared by modules gets one copy
    for module in model.modules():
        for key, value in module._parameters.items():
            if value is not None and value.is_inference():
                new = copies.setdefault(id(value), torch.nn.Parameter(_normal_copy(value.detach()),
                                                                      requires_grad=value.requires_grad))
                swapped.append((module._parameters, key, value, new))
        for key, value in module.__dict__.items():
            if isinstance(value, _HOLDERS) and key not in _MODULE_INTERNALS and (
                    new := _without_inference(value)) is not None:
                swapped.append((module.__dict__, key, value, new))
        for key, value in module._buffers.items():
            if value is not None and (new := _without_inference(value)) is not None:
                swapped.append((module._buffers, key, value, new))
    for holder, key, _, new in swapped:
        holder[key] = new
    try:
        yield
    finally:
        for holder, key, original, _ in swapped:
            holder[key] = original


@contextmanager
def attack_mode(model: torch.nn.Module, bn_mode: str = "eval"):
    """Run the body with the model in ``bn_mode``, parameters frozen and grad enabled; restore all afterwards.

    Works from inside the caller's ``torch.no_grad()`` and ``torch.inference_mode()`` (YOLOv5's val.py and
    Lightning's validation loop run under the latter, which ``enable_grad`` alone does not escape), and on a
    model whose caches were filled under inference mode (``normal_caches``). With ``bn_mode="train"`` the
    batch-norm running statistics the attack's forwards update are put back.
    """
    with (preserved_modes(model), torch.inference_mode(False), normal_caches(model), fast_input_grad(model),
          pool_first(model)):
        params = list(model.parameters())  # after the swap: an inference tensor's flag cannot be set back
        flags = [p.requires_grad for p in params]
        # Saved after the swap: the statistics restored are the ones the forwards update (copies, if swapped).
        buffers = [b.detach().clone() for b in model.buffers()] if bn_mode == "train" else None
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


class Passes:
    """Backward passes taken in this process, an attack's input gradients and the training updates alike: the
    epoch loop reports them per batch (``grad_computations_per_example``), so that modes compare by their cost."""

    taken = 0


def loss_and_grad(model, x: torch.Tensor, objective):
    """Per-example ``objective(model(x))``, the outputs and the gradient of the summed objective in ``x``.

    Summed, not averaged: a per-example gradient must not shrink with the batch size. Objectives compute in
    fp32 even under autocast; with fp16 each example's output gradient is scaled before the backward pass
    through the network and the input gradient unscaled (``_per_example_scaled``), so that none underflows.
    """
    device = x.device.type
    fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
    x = as_input(x).requires_grad_(True)
    outputs = model(x)
    detached = outputs.detach() if hasattr(outputs, "detach") else tree_map(
        lambda v: v.detach() if torch.is_tensor(v) else v, outputs)
    rows = _example_rows(outputs, len(x)) if fp16 else None
    if rows is not None:
        losses, grad = _per_example_scaled(model, x, outputs, rows, objective)
    else:
        losses = objective(outputs)
        if not losses.requires_grad:  # the output does not depend on x at all: its gradient is zero
            return losses.detach(), detached, torch.zeros_like(x)
        Passes.taken += 1
        if fp16:  # no retained graph: an overflow (rare) pays a pass in fp32 below instead of every step a kept one
            grad = torch.autograd.grad(losses.sum() * FP16_LOSS_SCALE, x)[0] / FP16_LOSS_SCALE
        else:
            grad = torch.autograd.grad(losses.sum(), x)[0]
    if fp16 and not torch.isfinite(grad).all():  # overflow: the gradient in fp32 is the safe fallback
        Passes.taken += 1
        with torch.autocast(device, enabled=False):
            grad = torch.autograd.grad(objective(model(x)).sum(), x)[0]
    check_half(x, grad)
    return losses.detach(), detached, grad


def _example_rows(outputs, n: int) -> list | None:
    """The output tensors autograd reaches, where every one has a row per example (else None)."""
    leaves = [t for t in tree_flatten(outputs)[0] if torch.is_tensor(t) and t.requires_grad]
    if not leaves or not all(t.is_floating_point() and t.dim() and len(t) == n for t in leaves):
        return None
    return leaves


def _per_example_scaled(model, x, outputs, rows: list, objective):
    """fp16: the objective's gradient at the outputs taken in fp32, each example's scaled to a largest entry of 1
    before the backward pass through the fp16 network, and unscaled at the input. One pass, as without scaling.

    The scale is exact where examples do not interact (eval mode); with batch norm in train mode they do, and
    the batch shares one scale, its smallest."""
    leaves, spec = tree_flatten(outputs)
    proxies = [t.detach().float().requires_grad_(True) if any(t is r for r in rows) else t for t in leaves]
    held = [p for p, t in zip(proxies, leaves) if any(t is r for r in rows)]
    losses = objective(tree_unflatten(proxies, spec))
    if not losses.requires_grad:
        return losses.detach(), torch.zeros_like(x)
    Passes.taken += 1
    g_out = [torch.zeros_like(p) if g is None else g
             for p, g in zip(held, torch.autograd.grad(losses.sum(), held, allow_unused=True))]
    peak = torch.stack([g.flatten(1).abs().amax(1) for g in g_out]).amax(0)
    scale = 1.0 / peak.clamp_min(1e-30)  # an all-zero row keeps a finite scale: its gradient is zero either way
    if any(m.training for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)):
        scale = scale.min().expand_as(scale)
    scaled = [(g * scale.view((-1,) + (1,) * (g.dim() - 1))).to(r.dtype) for g, r in zip(g_out, rows)]
    grad = torch.autograd.grad(rows, x, grad_outputs=scaled)[0]
    return losses.detach(), grad / scale.view((-1,) + (1,) * (x.dim() - 1))


def check_half(x: torch.Tensor, grad: torch.Tensor) -> None:
    """A model run in ``.half()`` (as YOLO's val.py does) gives all-zero input gradients: refuse to attack with
    them, rather than report a robustness that is only underflow."""
    if x.dtype == torch.float16 and not grad.any():
        raise AdvbenchError("the input gradient is exactly zero with fp16 inputs (a model in .half()): gradient "
                            "attacks cannot work there; run the model in bf16 (amp=bf16, or autocast with "
                            "torch.bfloat16) or in fp32")


def terms_grad(model, x: torch.Tensor, terms_fn, weights: dict | None = None) -> torch.Tensor:
    """sum_t w_t g_t / ||g_t||_2 (per example) of the named terms ``terms_fn(model(x))`` (no ``weights``: every
    term the model has, weight 1; a term named that the model lacks is an error): one forward pass, one backward
    pass per term."""
    x = x.detach().requires_grad_(True)
    terms = terms_fn(model(x))
    shape = (-1,) + (1,) * (x.dim() - 1)
    total = torch.zeros_like(x)
    for name, weight in (weights or dict.fromkeys(terms, 1.0)).items():
        if not weight:
            continue
        if name not in terms:
            raise AdvbenchError(f"attack.terms: this model has no {name} loss term; it has {', '.join(terms)}")
        Passes.taken += 1
        grad = torch.autograd.grad(terms[name].float().sum(), x, retain_graph=True, allow_unused=True)[0]
        if grad is not None:
            total += weight * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
    check_half(x, total)
    return total
