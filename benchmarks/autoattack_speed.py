"""advbench's standard AutoAttack (eval=autoattack) beside the reference AutoAttack (pyautoattack, the authors'
code, version 'standard') on the same model and examples (a benchmark, not a test).

Both run APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5000 queries) on the examples still robust.
The reference runs as its README runs it (``model.eval()``, nothing of advbench around it); ``--reference-frozen``
also times it inside advbench's ``attack_mode``, which hands it two of advbench's savings (no parameter gradients,
the faster one-channel input gradient).
Printed: each side's wall and CPU seconds and robust accuracy (advbench's at each evaluation batch size asked for:
a number, or ``auto``: the largest that fits on CUDA, blocks of a few MB on the CPU), the reference's at each of
its batch sizes, the reference-to-advbench time ratios, and the per-example disagreements: examples advbench
calls robust that the reference breaks, and the reverse. The model is a checkpoint of an advbench run, e.g. the
default experiment's:

    advbench hydra.run.dir=outputs/default && python benchmarks/autoattack_speed.py outputs/default
"""
import argparse
import logging
import time

import torch
from timing import run_examples, timed  # benchmarks/timing.py

from advbench.api import preset
from advbench.attacks.reference import reference_autoattack, run_reference
from advbench.evaluation import Evaluator
from advbench.evaluation.batch import auto_batch_size
from advbench.runtime.compiled import resolve_compile
from advbench.tasks import build_task

log = logging.getLogger("benchmark")


def cpu_timed(fn, device):
    """``fn()``, its wall seconds and this process's CPU seconds (on a shared machine the CPU time of a
    one-thread run is the steadier of the two)."""
    cpu = time.process_time()
    out, wall = timed(fn, device)
    return out, wall, time.process_time() - cpu


def reference_as_published(model, x, y, eps):
    """The reference as its README runs it: ``model.eval()``, the model's parameters as trained (so its FAB-T's
    ``backward()`` also fills their gradients), no advbench code around it."""
    model.eval()
    x_adv = run_reference(model, x, y, "linf", eps)
    model.zero_grad(set_to_none=True)
    return x_adv


def reference_flags(model, task, x, y, eps, chunk, frozen):
    """Per example: still correct after the reference AutoAttack (run ``chunk`` examples at a time); ``frozen``
    runs it inside advbench's ``attack_mode`` (parameters frozen, the one-channel convolution's faster input
    gradient), as ``eval=autoattack_reference`` does."""
    attack = (lambda a, b: reference_autoattack(model, a, b, "linf", eps)) if frozen else (
        lambda a, b: reference_as_published(model, a, b, eps))
    flags = []
    for i in range(0, len(y), chunk):
        x_adv = attack(x[i:i + chunk], y[i:i + chunk])
        with torch.no_grad():
            flags.append(task.correct(task.predict(model, x_adv), y[i:i + chunk]).cpu())
    return torch.cat(flags)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an advbench run directory or model.pt")
    parser.add_argument("--n-examples", type=int, default=None, help="first n test examples (default: 1000 on "
                        "the CPU, all on CUDA)")
    parser.add_argument("--eps", default=None, help="default: the checkpoint's eps")
    parser.add_argument("--batch-sizes", default=None, help="advbench's eval.batch_size values, comma-separated "
                        "(default: auto on the CPU, 500,auto on CUDA)")
    parser.add_argument("--reference-batches", default=None, help="the reference's batch sizes, comma-separated "
                        "(default: 500 on the CPU, all examples at once on CUDA); the first is compared per example")
    parser.add_argument("--preset", default="autoattack", help="advbench's evaluation preset (autoattack_fast: "
                        "APGD-CE and APGD-T only, to measure batch sizes quickly)")
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"], help="advbench's compile "
                        "setting (default auto: compiled on CUDA, eager on the CPU, as a run)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: one core each side)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference AutoAttack")
    parser.add_argument("--reference-frozen", action="store_true", help="also time the reference inside advbench's "
                        "attack_mode (frozen parameters, faster one-channel input gradient), as "
                        "eval=autoattack_reference runs it")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = args.n_examples or (None if device.type == "cuda" else 1000)  # None: every test example
    model, x, y, eps, cfg, data = run_examples(args.checkpoint, n, args.eps, args.threads, device)
    task = build_task(data)
    eps_text = args.eps or str(cfg.eps)
    compiled = resolve_compile({"true": True, "false": False}.get(args.compile, "auto"), device)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    log.info("%s, %d test examples, Linf eps=%s, %s, torch %s, advbench %s", cfg.model._target_, len(y), eps_text,
             machine, torch.__version__, "compiled" if compiled else "eager")

    rows, ours, references = [], [], []
    sizes = (args.batch_sizes or ("500,auto" if device.type == "cuda" else "auto")).split(",")
    for size in sizes:
        batch = auto_batch_size(model, data.shape, device) if size == "auto" else int(size)
        torch.manual_seed(0)
        evaluator = Evaluator(task, device, batch_size=batch, compile=compiled)
        attacks = preset(args.preset, eps_text)
        outcome, wall, cpu = cpu_timed(lambda: evaluator.run(model, x, y, attacks, report=True), device)
        robust = outcome.flags["clean"] & outcome.flags[list(attacks)[-1]]  # the cascade's flags are cumulative
        ours.append(robust)
        rows.append((f"advbench eval={args.preset} (batch {batch})", wall, cpu, robust.float().mean().item()))
    if not args.no_reference:
        chunks = [int(c) for c in (args.reference_batches or ("500" if device.type == "cpu" else str(len(y))))
                  .split(",")]
        runs = [(c, False) for c in chunks] + ([(chunks[0], True)] if args.reference_frozen else [])
        for chunk, frozen in runs:
            flags, wall, cpu = cpu_timed(lambda: reference_flags(model, task, x, y, eps, chunk, frozen), device)
            name = f"reference, in advbench's attack_mode (batch {chunk})" if frozen else (
                f"reference AutoAttack, pyautoattack (batch {chunk})")
            rows.append((name, wall, cpu, flags.float().mean().item()))
            references.append(flags)
        reference = references[0]  # the first batch size, as published: the one compared per example

    log.info("%-52s %10s %10s %12s", "", "wall s", "CPU s", "robust acc")
    for name, wall, cpu, acc in rows:
        log.info("%-52s %10.1f %10.1f %12.4f", name, wall, cpu, acc)
    if args.no_reference:
        return
    for (name, wall, cpu, _), robust in zip(rows, ours):
        for ref_name, ref_wall, ref_cpu, _ in rows[len(ours):len(ours) + len(chunks)]:
            log.info("%s: %s / advbench time %.2fx (wall), %.2fx (CPU)", name, ref_name, ref_wall / wall,
                     ref_cpu / cpu)
        log.info("%s: robust here, broken by the reference (batch %d): %d; broken here, robust for the reference: "
                 "%d (of %d)", name, chunks[0], int((robust & ~reference).sum()), int((~robust & reference).sum()),
                 len(y))


if __name__ == "__main__":
    main()
