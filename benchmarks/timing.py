"""What the benchmarks share: wall time with the GPU's queue drained at both ends, and a run's model and test
examples with the command line that picks them."""
import argparse
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


def run_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line on a saved run, described by its module docstring's first paragraph: the run,
    how many test examples, eps and threads (what ``run_examples`` takes); the benchmark adds its own options."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    parser.add_argument("checkpoint", help="an advbench run directory or model.pt")
    parser.add_argument("--n-examples", type=int, default=64, help="first n test examples, one batch (default 64: "
                        "eval.batch_size=auto's pick for small_cnn on the CPU)")
    parser.add_argument("--eps", default=None, help="default: the checkpoint's eps")
    parser.add_argument("--threads", type=int, default=1)
    return parser


def run_examples(checkpoint: str, n_examples: int | None, eps=None, threads: int = 1, device=torch.device("cpu")):
    """The setup of a benchmark on a saved run: its model on ``device`` (eval mode, channels_last, as a run
    evaluates it), its first ``n_examples`` test examples in [0,1] there (None: all), its eps (``eps`` overrides
    it), its config and its data."""
    from advbench.data import load_data
    from advbench.data.loaders import to_unit
    from advbench.eps import parse_eps
    from advbench.runtime.checkpoint import load_model, load_stored

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(threads)
    cfg, _ = load_stored(checkpoint)  # a stored config is data: checked before anything is built from it
    data = load_data(cfg.dataset)
    model = load_model(checkpoint, device=device, data=data).to(memory_format=torch.channels_last).eval()
    x, y = to_unit(data.test[0][:n_examples]).to(device), data.test[1][:n_examples].to(device)
    return model, x, y, parse_eps(eps or str(cfg.eps)), cfg, data
