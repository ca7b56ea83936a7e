"""What the attack-time module rewrites share (grayscale_conv, pool_first, windowed): whether a hook would see
a module's work, and replacing modules' ``forward`` for the length of an attack."""
from contextlib import contextmanager

from torch import nn
from torch.nn.modules import module as _module


def hooked(*modules) -> bool:
    """Whether a forward or backward hook, global or on one of ``modules``, would see the module's work."""
    global_hooks = (_module._global_forward_hooks, _module._global_forward_pre_hooks,
                    _module._global_backward_hooks, _module._global_backward_pre_hooks)
    return any(global_hooks) or any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                    or m._backward_pre_hooks for m in modules)


def replaceable(module: nn.Module) -> bool:
    """Whether ``module`` still runs its class's ``forward`` (not one replaced already, by us or by its user)."""
    return "forward" not in module.__dict__


@contextmanager
def replaced_forwards(replacements: list):
    """Within the body each ``(module, forward)`` pair's module runs that ``forward``; its own is back on exit."""
    for module, forward in replacements:
        module.forward = forward
    try:
        yield
    finally:
        for module, _ in replacements:
            del module.forward
