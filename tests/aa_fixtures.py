"""Fixtures of the FAB and Square tests: a digits MLP, a gradient-masked wrapper, the reference AutoAttack, and a
recorder of the shapes the passes run ops on."""
import copy
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpShapes(TorchDispatchMode):
    """Records the shape of the first argument of every call to each of ``ops`` (aten overload packets)."""

    def __init__(self, *ops):
        super().__init__()
        self.seen = {op: [] for op in ops}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in self.seen:
            self.seen[func.overloadpacket].append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


class MLP(torch.nn.Module):
    """Digits MLP with the input normalization inside, so attacks see [0,1] images."""

    def __init__(self, hidden=128):
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.3053))
        self.register_buffer("std", torch.tensor(0.3760))
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class Counting(torch.nn.Module):
    """Records how many images each forward pass sees."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.model(x)


class Quantized(torch.nn.Module):
    """``model`` behind a non-differentiable input quantization: its input gradient is zero everywhere."""

    def __init__(self, model, levels=8):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x):
        return self.model(torch.round(x * self.levels) / self.levels)


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    return (x[train], y[train]), (x[test], y[test])


@pytest.fixture(scope="session")
def mlp(digits):
    """Trained full-batch to ~97% test accuracy in a second or two."""
    (x, y), _ = digits
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def mixed_mode_copy(model):
    """A copy of ``model`` in train mode with one sub-module in eval mode, and the modes it must get back."""
    model = copy.deepcopy(model).train()
    next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).eval()
    return model, [m.training for m in model.modules()]


@pytest.fixture(scope="session")
def reference():
    """The reference implementation's modules (fra31/auto-attack, packaged as pyautoattack); skips if absent."""
    for package in ("pyautoattack", "autoattack"):
        try:
            return importlib.import_module(f"{package}.fab_pt"), importlib.import_module(f"{package}.square")
        except ImportError:
            continue
    pytest.skip("the reference AutoAttack (pyautoattack or autoattack) is not importable")
