"""``eval.batch_size: auto``: on CUDA the largest batch an attack step fits in memory (probed once per model and
input shape), on the CPU the usual 500 (larger batches do not run faster there)."""
import logging

import torch

from advbench.attacks.gradients import attack_mode

log = logging.getLogger(__name__)
CPU_BATCH, FIRST, LARGEST = 500, 256, 32768
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


def auto_batch_size(model, shape: tuple, device, fits=fits) -> int:
    """The evaluation batch size for ``model`` on inputs of ``shape``: doubling from 256 while an attack step
    fits, up to 32768 (128 where 256 does not fit); 500 on the CPU, and for models a plain probe cannot drive
    (token ids, detectors' structured outputs)."""
    device = torch.device(device)
    if device.type != "cuda" or len(shape) != 3:
        return CPU_BATCH
    key = (id(model), tuple(shape), str(device))
    if key not in _probed:
        try:
            batch = FIRST
            while batch * 2 <= LARGEST and fits(model, shape, batch * 2, device):
                batch *= 2
            _probed[key] = batch if fits(model, shape, batch, device) else FIRST // 2
        except (TypeError, AttributeError, RuntimeError) as err:  # outputs that are not one tensor
            log.info("eval.batch_size=auto: cannot probe this model (%s); using %d", type(err).__name__, CPU_BATCH)
            _probed[key] = CPU_BATCH
        log.info("eval.batch_size=auto: %d on %s for inputs %s", _probed[key], device, tuple(shape))
    return _probed[key]
