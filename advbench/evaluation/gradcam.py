"""Grad-CAM (Selvaraju et al. 2017) of any objective, whatever the task: the objective's gradient at one layer's
feature maps, averaged over space into one weight per channel, ReLU(sum_k w_k A_k), upsampled to the input.

The layer is a module name as ``model.named_modules()`` gives it; by default the one a model names in its
``saliency_layer`` attribute, else the last ``nn.Conv2d`` run whose output is spatial, is not a head's (it
reaches the loss through another module) and feeds every loss term: the last convolution before the heads. The
model is left exactly as it was: hooks removed, modes restored, no parameter gradient.
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

from advbench.attacks.gradients import as_input, attack_mode
from advbench.errors import AdvbenchError

log = logging.getLogger(__name__)


def _declared(model: nn.Module) -> str | None:
    """The ``saliency_layer`` a model (or a module inside it, e.g. the net behind Normalize) declares, as a name
    of ``model.named_modules()``."""
    for prefix, module in model.named_modules():
        layer = getattr(module, "saliency_layer", None)
        if isinstance(layer, str):
            return f"{prefix}.{layer}" if prefix else layer
    return None


def candidates(model: nn.Module, n: int = 5) -> list:
    """The last ``n`` convolutional modules' names: what a saliency.layer error suggests."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))][-n:] or [
        name for name, _ in model.named_modules() if name][-n:]


def _graph(loss: torch.Tensor, stops: set = frozenset()) -> tuple:
    """(every node the loss's graph reaches, the nodes of ``stops`` it reaches through functional operations
    alone, never through another of ``stops``)."""
    seen, reached, todo = set(), set(), [(loss.grad_fn, False)]
    while todo:
        node, beyond = todo.pop()  # beyond: a node of ``stops`` lies between it and the loss
        if node is None or (node, beyond) in seen:
            continue
        seen.add((node, beyond))
        if node in stops and not beyond:
            reached.add(node)
        todo.extend((nxt, beyond or node in stops) for nxt, _ in node.next_functions)
    return {node for node, _ in seen}, reached


def default_layer(model: nn.Module, x: torch.Tensor, loss_fns) -> str:
    """The layer Grad-CAM reads when saliency.layer is null: the model's ``saliency_layer``, else the last Conv2d
    run (one probe forward) with a spatial output that is not a head's and that every objective of ``loss_fns``
    (one, or a dict of them: a detector's loss terms) reaches: a head's output reaches the loss through functional
    operations alone, any other through another module. A layer one head alone reads (Faster R-CNN's RPN, SSD's
    classification branch) would leave the other terms' maps empty; where no layer is shared, the first
    objective's last one."""
    declared = _declared(model)
    if declared is not None:
        return declared
    fns = list(loss_fns.values()) if isinstance(loss_fns, dict) else [loss_fns]
    names = {m: name for name, m in model.named_modules()}
    convs, outputs, handles = [], [], []  # outputs kept: their graph nodes stay alive while compared

    def hook(module, inputs, out):
        if torch.is_tensor(out) and out.grad_fn is not None:
            outputs.append(out)
            if isinstance(module, nn.Conv2d) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                convs.append((names[module], out.grad_fn))
    for module in model.modules():
        if isinstance(module, nn.Conv2d) or not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(hook))
    try:
        with attack_mode(model):
            out = model(as_input(x).requires_grad_(True))
            losses = [fn(out).float().sum() for fn in fns]
    finally:
        for handle in handles:
            handle.remove()
    if not convs:
        raise AdvbenchError(f"saliency.method=gradcam: {type(model).__name__} has no convolution with a spatial "
                            "output; name a layer whose output is (N, C, H, W) with saliency.layer=<module name>")
    stops = {out.grad_fn for out in outputs}
    reached = [_graph(loss, stops) if loss.requires_grad else (set(), set()) for loss in losses]
    inner = [[name for name, node in convs if node in graph and node not in heads] for graph, heads in reached]
    shared = [name for name in inner[0] if all(name in other for other in inner[1:])]
    return (shared or inner[0] or [name for name, _ in convs])[-1]


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module ``layer`` names, or one line listing a few of the model's convolutional layers."""
    found = dict(model.named_modules()).get(layer)
    if found is None or not layer:
        raise AdvbenchError(f"saliency.layer={layer}: no such module in {type(model).__name__}; e.g. "
                            f"{', '.join(candidates(model))} (names as model.named_modules() gives them)")
    return found


def gradcam(model: nn.Module, x: torch.Tensor, loss_fn, layer: str) -> torch.Tensor:
    """Grad-CAM of the summed per-example objective ``loss_fn(model(x))`` at module ``layer``, per example and
    upsampled (bilinear) to the input's size: (N, H, W). A module run twice in one forward: its last output."""
    module, captured = find_layer(model, layer), []
    handle = module.register_forward_hook(lambda m, inputs, out: captured.append(out))
    try:
        with attack_mode(model):
            # The input carries the graph: the parameters are frozen while attack_mode holds.
            loss = loss_fn(model(as_input(x).requires_grad_(True))).float().sum()
            if not captured or not torch.is_tensor(captured[-1]) or captured[-1].dim() != 4:
                shape = tuple(captured[-1].shape) if captured and torch.is_tensor(captured[-1]) else "no tensor"
                raise AdvbenchError(f"saliency.layer={layer}: its output is {shape}, not (N, C, H, W) feature maps; "
                                    f"name a convolutional layer, e.g. {', '.join(candidates(model))}")
            acts = captured[-1]
            grad = torch.autograd.grad(loss, acts, allow_unused=True)[0] if loss.requires_grad else None
    finally:
        handle.remove()
    acts = acts.detach().float()
    grad = torch.zeros_like(acts) if grad is None else grad.float()
    weights = grad.mean((2, 3), keepdim=True)  # alpha_k: the spatial mean of the gradient of each channel
    cam = (weights * acts).sum(1, keepdim=True).clamp_min(0)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def wants_gradcam(settings) -> bool:
    """saliency.method=gradcam (an enum from the schema, a string from a plain config)."""
    return str(getattr(settings.method, "value", settings.method)) == "gradcam"


def gradcam_maps(model: nn.Module, x: torch.Tensor, objectives: dict, settings) -> dict:
    """With saliency.method=gradcam, {name: Grad-CAM (N, H, W)} of each per-example objective ``loss_fn(outputs)``
    at saliency.layer (null: ``default_layer``, one that every objective reaches); else {}."""
    if not wants_gradcam(settings) or not objectives:
        return {}
    layer = settings.layer or default_layer(model, x, objectives)
    find_layer(model, layer)
    log.info("Grad-CAM at layer %s of %s", layer, type(model).__name__)
    return {name: gradcam(model, x, fn, layer) for name, fn in objectives.items()}
