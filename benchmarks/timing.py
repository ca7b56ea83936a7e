"""What the benchmarks share: wall time with the GPU's queue drained at both ends, and a run's model and test
examples."""
import logging
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


def run_examples(checkpoint: str, n_examples: int, eps=None, threads: int = 1):
    """The CPU setup of a benchmark on a saved run: its model (eval mode, channels_last, as a run evaluates it),
    its first ``n_examples`` test examples in [0,1], its eps (``eps`` overrides it) and its config."""
    from advbench.data import load_data
    from advbench.data.loaders import to_unit
    from advbench.eps import parse_eps
    from advbench.runtime.checkpoint import load_model, load_stored

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(threads)
    cfg, _ = load_stored(checkpoint)  # a stored config is data: checked before anything is built from it
    data = load_data(cfg.dataset)
    model = load_model(checkpoint, device=torch.device("cpu"), data=data).to(memory_format=torch.channels_last).eval()
    x, y = to_unit(data.test[0][:n_examples]), data.test[1][:n_examples]
    return model, x, y, parse_eps(eps or str(cfg.eps)), cfg
