"""``eval.batch_size: auto``: on CUDA the largest batch an attack step fits in memory (probed once per model and
input shape); on the CPU the largest whose biggest layer output stays a few MB.

On the CPU a big batch is slower per example, not faster: glibc returns a freed buffer of tens of MB (a layer's
output at batch 500) to the OS, so every pass faults its pages in again. small_cnn on Fashion-MNIST (50 KB per
example in its first layer) runs an attack step 1.35x and a forward pass 1.7x faster in blocks of 64 than of 500,
with the same gradients; ``benchmarks/cpu_batch.py`` measures the curve.
"""
import logging
import math

import torch

from advbench.attacks.gradients import attack_mode

log = logging.getLogger(__name__)
CPU_BATCH, FIRST, LARGEST = 500, 256, 32768
CPU_SMALLEST, CPU_BLOCK_BYTES = 32, 4 * 2**20  # measured: within 3% of the fastest batch (benchmarks.md)
_probed: dict = {}


def fits(model, shape: tuple, batch: int, device) -> bool:
    """Whether a forward and input-gradient pass of ``batch`` inputs of ``shape`` fits in the device's memory."""
    try:
        x = torch.rand(batch, *shape, device=device, requires_grad=True)
        with attack_mode(model):
            out = model(x)
            torch.autograd.grad(out.float().sum(), x)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def largest_output_bytes(model, shape: tuple) -> int:
    """Bytes per example of the largest tensor a leaf module of ``model`` outputs on inputs of ``shape`` (probed
    on two random inputs, in eval mode, on the model's device)."""
    sizes = []

    def record(module, args, out):
        if torch.is_tensor(out):
            sizes.append(out.numel() * out.element_size())
    hooks, device = [], next(model.parameters(), torch.empty(0)).device
    try:
        for module in model.modules():
            if next(module.children(), None) is None:  # a leaf: its output is one layer's
                hooks.append(module.register_forward_hook(record))
        with attack_mode(model), torch.no_grad():
            # A generator of its own: the global random stream (the attacks' starts) stays untouched.
            model(torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)).to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes, default=0) // 2


def cpu_batch_size(model, shape: tuple) -> int:
    """The largest power of two (32 at least) whose largest layer output fits in ``CPU_BLOCK_BYTES``, or 500
    where 500 fits."""
    per_example = largest_output_bytes(model, shape)
    if per_example * CPU_BATCH <= CPU_BLOCK_BYTES:
        return CPU_BATCH
    return max(CPU_SMALLEST, 2 ** int(math.log2(CPU_BLOCK_BYTES / per_example)))


def auto_batch_size(model, shape: tuple, device, fits=fits) -> int:
    """The evaluation batch size for ``model`` on inputs of ``shape``: on CUDA doubling from 256 while an attack
    step fits, up to 32768 (128 where 256 does not fit); on the CPU ``cpu_batch_size``; 500 for models a plain
    probe cannot drive (token ids, detectors' structured outputs)."""
    device = torch.device(device)
    if len(shape) != 3:
        return CPU_BATCH
    cuda, key = device.type == "cuda", (id(model), tuple(shape), str(device))
    if cuda and key in _probed:  # the CPU probe is one small forward pass: never cached
        return _probed[key]
    try:
        batch = _largest_that_fits(model, shape, device, fits) if cuda else cpu_batch_size(model, shape)
    except (TypeError, AttributeError, RuntimeError) as err:  # outputs that are not one tensor
        log.info("eval.batch_size=auto: cannot probe this model (%s); using %d", type(err).__name__, CPU_BATCH)
        batch = CPU_BATCH
    log.info("eval.batch_size=auto: %d on %s for inputs %s", batch, device, tuple(shape))
    if cuda:
        _probed[key] = batch
    return batch


def _largest_that_fits(model, shape: tuple, device, fits) -> int:
    """Doubling from 256 while a batch fits, up to 32768; 128 where 256 does not fit."""
    batch = FIRST
    while batch * 2 <= LARGEST and fits(model, shape, batch * 2, device):
        batch *= 2
    return batch if fits(model, shape, batch, device) else FIRST // 2
