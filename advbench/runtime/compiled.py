"""``compile``: torch.compile where it pays, with batches padded to a few fixed sizes so that nothing recompiles.

The cascade evaluator attacks the examples still correct, attacks drop the examples they have broken, and the
last batch of a split is partial: with one graph per batch size each of these would compile again. ``Bucketed``
pads a batch up to the next of a few sizes (the registered full batch sizes and the powers of two below the
largest, down to a 32nd of it) with detached copies of its first row, runs the graph compiled for that size
(``dynamic=False``: one graph per bucket) and slices every output back to the real rows.
"""
import logging

import torch
from torch.utils._pytree import tree_flatten, tree_map

from advbench.errors import AdvbenchError

log = logging.getLogger(__name__)

SPAN = 32  # the smallest bucket is the largest over this (rounded to a power of two): padding waste stays small
GRAPHS_PER_BUCKET = 8  # train/eval, grad or not, autocast...: the graphs one bucket may need
ACCEPTED = "auto (or null: on with CUDA, off on the CPU), true or false"


def resolve_compile(setting, device, pads_batches: bool = True) -> bool:
    """Whether a run compiles its model: ``compile=auto`` (or null) on CUDA only, where the task's outputs have
    one row per example (``Task.pads_batches``); on the CPU compiled steps measured slower (docs/benchmarks.md).
    ``true`` and ``false`` as given."""
    if setting is None or setting == "auto":
        return torch.device(device).type == "cuda" and pads_batches
    if setting is True or setting is False:
        return setting
    raise AdvbenchError(f"compile={setting!r}: expected {ACCEPTED}")


def raise_recompile_limit(graphs: int) -> None:
    """Let dynamo keep ``graphs`` graphs of one forward (its default, 8, would fall back to eager sooner)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), graphs))
    total = "accumulated_recompile_limit" if hasattr(config, "accumulated_recompile_limit") else \
        "accumulated_cache_size_limit"
    setattr(config, total, max(getattr(config, total), 4 * graphs))


def buckets(sizes) -> tuple:
    """The batch sizes graphs are compiled for: ``sizes`` and the powers of two below the largest, down to
    about a ``SPAN``-th of it."""
    largest = max(sizes)
    floor = max(1, largest // SPAN)
    powers = {1 << k for k in range(largest.bit_length()) if floor <= 1 << k < largest}
    return tuple(sorted(set(sizes) | powers))


def _pad(t: torch.Tensor, size: int) -> torch.Tensor:
    """``t`` with rows up to ``size``: detached copies of its first row (real inputs, so no inf or nan path; no
    gradient flows from them), in ``t``'s memory format so that every call of a bucket meets the same strides."""
    fill = t.detach()[:1].expand(size - len(t), *t.shape[1:])
    channels_last = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.cat([t, fill]).contiguous(memory_format=torch.channels_last if channels_last
                                           else torch.contiguous_format)


class Bucketed(torch.nn.Module):
    """``module`` run compiled, each batch padded up to its bucket and the outputs cut back to its rows.

    Its parameters, buffers and modes are the module's own (``train()``, ``parameters()`` and the attacks'
    ``attack_mode`` reach it); other attributes are read from the module. Checkpoints save the bare module,
    never this wrapper. Batches larger than every bucket run eagerly, and so does a batch off the buckets while a
    batch norm is in train mode: padded rows would change its batch statistics, so such a batch (a training
    epoch's last, partial one) runs exactly, through the bare module, rather than padded.
    """

    def __init__(self, module: torch.nn.Module, sizes, backend="inductor"):
        super().__init__()
        self.inner = module
        # Kept out of the module tree: its parameters are the inner module's, and state_dict() must not repeat them.
        self.__dict__["graphs"] = torch.compile(module, dynamic=False, backend=backend)
        self.__dict__["batch_norms"] = [m for m in module.modules()
                                        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self.sizes = ()
        self.add_sizes(sizes)

    def add_sizes(self, sizes) -> None:
        """Compile these batch sizes exactly too (a run's full batches), and rebuild the buckets around them."""
        sizes = {int(s) for s in sizes if s} | set(self.sizes)
        if sizes - set(self.sizes):
            self.sizes = buckets(sizes)
            raise_recompile_limit(GRAPHS_PER_BUCKET * len(self.sizes))
            log.debug("compile: batches padded to one of %s", self.sizes)

    def bucket(self, n: int) -> int | None:
        """The size a batch of ``n`` runs at; None: eagerly (larger than every bucket)."""
        return next((size for size in self.sizes if size >= n), None)

    def forward(self, *args, **kwargs):
        leaves = [t for t in tree_flatten((args, kwargs))[0] if torch.is_tensor(t) and t.dim()]
        if not leaves:
            return self.inner(*args, **kwargs)
        n = len(leaves[0])
        size = self.bucket(n)
        if size is None or (size != n and any(m.training for m in self.batch_norms)):
            return self.inner(*args, **kwargs)
        if size == n:
            return self.graphs(*args, **kwargs)
        pad = lambda v: _pad(v, size) if torch.is_tensor(v) and v.dim() and len(v) == n else v  # noqa: E731
        outputs = self.graphs(*tree_map(pad, args), **tree_map(pad, kwargs))
        return tree_map(lambda v: v[:n] if torch.is_tensor(v) and v.dim() and len(v) == size else v, outputs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # ``module`` is DDP's: distributed.bare() must find this wrapper, not the eager module inside it
            if name.startswith("__") or name == "module" or "inner" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["inner"], name)
