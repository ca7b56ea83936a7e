"""What the benchmarks share: wall time with the GPU's queue drained at both ends."""
import time

import torch


def timed(fn, device):
    """``fn()`` and its wall time in seconds, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start
