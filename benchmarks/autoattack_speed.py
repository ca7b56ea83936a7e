"""advbench's eval=autoattack preset beside torchattacks' APGD-CE + APGD-T on the same model and examples.

Both run the same recipe (APGD-CE, then targeted APGD-DLR against the top 9 wrong classes, 100 steps each, Linf)
on the examples still classified correctly; printed: wall time and robust accuracy of each. A benchmark, not a
test. The model is a checkpoint of an advbench run, e.g. of the default experiment:

    advbench hydra.run.dir=outputs/default && python benchmarks/autoattack_speed.py outputs/default
"""
import argparse
import logging
import time

import torch
from omegaconf import OmegaConf

from advbench.attacks import Attack
from advbench.data import load_data
from advbench.data.loaders import to_unit
from advbench.eps import parse_eps
from advbench.evaluation import Evaluator
from advbench.runtime.checkpoint import build_model, load_checkpoint
from advbench.tasks import build_task

log = logging.getLogger("benchmark")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an advbench run directory or model.pt")
    parser.add_argument("--n-examples", type=int, default=1000, help="first n test examples (10000: all)")
    parser.add_argument("--eps", default=None, help="default: the checkpoint's eps")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    state = load_checkpoint(args.checkpoint)
    cfg = OmegaConf.create(state["config"])
    data = load_data(cfg.dataset)
    task = build_task(data)
    model = build_model(cfg.model, data, cfg.dataset, task, state["state_dict"]).eval()
    model = model.to(memory_format=torch.channels_last)
    eps = parse_eps(args.eps or cfg.eps)
    x, y = (t[:args.n_examples] for t in data.test)
    log.info("%s, %d test examples, Linf eps=%g", cfg.model._target_, len(y), eps)

    torch.manual_seed(0)
    start = time.perf_counter()
    ours = Evaluator(task, "cpu", batch_size=args.batch_size).evaluate(model, x, y, {
        "apgd_ce": Attack("apgd", "linf", eps, 2 * eps, steps=100, random_start=True, task=task),
        "apgd_t": Attack("apgd", "linf", eps, 2 * eps, steps=100, random_start=True, targeted=True, loss="dlr",
                         n_targets=9, task=task),
    })
    rows = [("advbench eval=autoattack", time.perf_counter() - start, ours["robust_acc"])]

    try:
        import torchattacks
    except ImportError:
        log.info("torchattacks is not installed: pip install torchattacks")
    else:
        attack = torchattacks.MultiAttack([
            torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
            torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=10, seed=0),
        ])
        start, correct = time.perf_counter(), 0
        for i in range(0, len(y), args.batch_size):
            xb, yb = to_unit(x[i:i + args.batch_size]), y[i:i + args.batch_size]
            correct += task.correct(task.predict(model, attack(xb, yb)), yb).sum().item()
        rows.append(("torchattacks APGD-CE + APGD-T", time.perf_counter() - start, correct / len(y)))

    log.info("%-32s %10s %12s", "", "seconds", "robust acc")
    for name, seconds, acc in rows:
        log.info("%-32s %10.1f %12.4f", name, seconds, acc)


if __name__ == "__main__":
    main()
