"""A ReLU followed by a max-pooling layer, computed as the pooling then the ReLU while attacking, on the CPU.

ReLU is nondecreasing, so max and ReLU commute: ``relu(maxpool(x)) == maxpool(relu(x))`` exactly, and so do
their input gradients (both pass a window's gradient to its first maximum where that is positive, nothing
anywhere else). Pooling first runs the ReLU and its backward pass on a quarter of the elements (a 2x2 pool): in
small_cnn they are the largest tensors of the pass. Applied to a ``ReLU`` directly followed by a ``MaxPool2d`` in
an ``nn.Sequential`` (LeNet- and VGG-style nets), neither used anywhere else, and only while neither has a hook,
which would see the other order.
"""
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from advbench.attacks.forwards import hooked, replaceable, replaced_forwards


def _reordered(relu, pool) -> bool:
    # Decided at each call, the same way for both modules: a hook added inside the attack sees the usual order.
    return not (hooked(relu, pool) or torch.compiler.is_compiling())


def _relu_forward(relu, pool, x):
    return x if _reordered(relu, pool) else F.relu(x)  # the ReLU runs after the pooling instead


def _pool_forward(relu, pool, x):
    out = type(pool).forward(pool, x)
    return F.relu(out) if _reordered(relu, pool) else out


def pairs(model: nn.Module) -> list:
    """The (ReLU, MaxPool2d) pairs of ``model`` that can run pool first: adjacent in an ``nn.Sequential``, each
    module used once, on the CPU, their forwards not replaced already."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        return []
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    found = []
    for seq in model.modules():
        if type(seq) is not nn.Sequential:
            continue
        layers = list(seq)
        for relu, pool in zip(layers, layers[1:]):
            if (type(relu) is nn.ReLU and type(pool) is nn.MaxPool2d and not pool.return_indices
                    and uses[id(relu)] == 1 and uses[id(pool)] == 1
                    and replaceable(relu) and replaceable(pool)):
                found.append((relu, pool))
    return found


def pool_first(model: nn.Module):
    """A context in which the model's ReLU and max-pooling pairs (see ``pairs``) run pooling first; their
    ``forward`` is put back on exit."""
    replacements = []
    for relu, pool in pairs(model):
        replacements += [(relu, lambda x, r=relu, p=pool: _relu_forward(r, p, x)),
                         (pool, lambda x, r=relu, p=pool: _pool_forward(r, p, x))]
    return replaced_forwards(replacements)
