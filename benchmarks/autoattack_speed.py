"""advbench's standard AutoAttack (eval=autoattack) beside the reference AutoAttack (pyautoattack, the authors'
code, version 'standard') on the same model and examples (a benchmark, not a test).

Both run APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5000 queries) on the examples still robust;
printed: wall time and robust accuracy of each, and advbench's at each evaluation batch size asked for (a number,
or ``auto``: the largest that fits on CUDA). The model is a checkpoint of an advbench run, e.g. the default
experiment's:

    advbench hydra.run.dir=outputs/default && python benchmarks/autoattack_speed.py outputs/default
"""
import argparse
import logging

import torch
from timing import timed  # benchmarks/timing.py

from advbench.api import preset
from advbench.attacks.reference import reference_autoattack
from advbench.data import load_data
from advbench.data.loaders import to_unit
from advbench.eps import parse_eps
from advbench.evaluation import Evaluator
from advbench.evaluation.batch import auto_batch_size
from advbench.runtime.checkpoint import load_model, load_stored
from advbench.tasks import build_task

log = logging.getLogger("benchmark")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an advbench run directory or model.pt")
    parser.add_argument("--n-examples", type=int, default=None, help="first n test examples (default: 1000 on "
                        "the CPU, all on CUDA)")
    parser.add_argument("--eps", default=None, help="default: the checkpoint's eps")
    parser.add_argument("--batch-sizes", default=None, help="advbench's eval.batch_size values, comma-separated "
                        "(default: 500 on the CPU, 500,auto on CUDA)")
    parser.add_argument("--preset", default="autoattack", help="advbench's evaluation preset (autoattack_fast: "
                        "APGD-CE and APGD-T only, to measure batch sizes quickly)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference AutoAttack")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    cfg, _ = load_stored(args.checkpoint)  # a stored config is data: checked before anything is built from it
    data = load_data(cfg.dataset)
    task = build_task(data)
    model = load_model(args.checkpoint, device=device, data=data)
    model = model.to(memory_format=torch.channels_last)
    eps_text = args.eps or str(cfg.eps)
    eps = parse_eps(eps_text)
    n = args.n_examples or (len(data.test[1]) if device.type == "cuda" else 1000)
    x, y = to_unit(data.test[0][:n]).to(device), data.test[1][:n].to(device)
    log.info("%s, %d test examples, Linf eps=%s, %s", cfg.model._target_, len(y), eps_text,
             torch.cuda.get_device_name() if device.type == "cuda" else "CPU")

    rows = []
    sizes = (args.batch_sizes or ("500,auto" if device.type == "cuda" else "500")).split(",")
    for size in sizes:
        batch = auto_batch_size(model, data.shape, device) if size == "auto" else int(size)
        torch.manual_seed(0)
        evaluator = Evaluator(task, device, batch_size=batch)
        ours, seconds = timed(lambda: evaluator.evaluate(model, x, y, preset(args.preset, eps_text)), device)
        rows.append((f"advbench eval={args.preset} (batch {batch})", seconds, ours["robust_acc"]))
        log.info("%s: %.1f s, robust acc %.4f", rows[-1][0], seconds, ours["robust_acc"])
    if not args.no_reference:
        def reference():
            correct, chunk = 0, 500 if device.type == "cpu" else len(y)  # the reference batches on its own
            for i in range(0, len(y), chunk):
                xb, yb = x[i:i + chunk], y[i:i + chunk]
                x_adv = reference_autoattack(model, xb, yb, "linf", eps)
                correct += task.correct(task.predict(model, x_adv), yb).sum().item()
            return correct / len(y)
        acc, seconds = timed(reference, device)
        rows.append(("reference AutoAttack (pyautoattack)", seconds, acc))

    log.info("%-44s %10s %12s", "", "seconds", "robust acc")
    for name, seconds, acc in rows:
        log.info("%-44s %10.1f %12.4f", name, seconds, acc)
    if not args.no_reference:
        log.info("reference / advbench time: %s", ", ".join(f"{rows[-1][1] / s:.2f} x" for _, s, _ in rows[:-1]))


if __name__ == "__main__":
    main()
