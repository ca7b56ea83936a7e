"""Square (Linf) with windowed queries against whole forward passes, side by side on one model and the same
examples (a benchmark, not a test): the time of each and whether they find the same points.

``advbench/attacks/windowed.py`` recomputes only what a query's window reaches; ``--whole`` runs are Square with
that turned off. Both draw the same random numbers, so on the same examples they should search alike, up to a
candidate whose margin moves by float rounding alone.

    python benchmarks/square_windowed.py <run dir> [--n-examples 64] [--queries 5000] [--repeats 2]

With ``--batch-sizes``, windowed Square instead runs on the first ``--n-examples`` test examples in batches of
each size given, and the seconds per example are printed (``square_rows`` picks the batch in an evaluation):

    python benchmarks/square_windowed.py <run dir> --n-examples 512 --batch-sizes 64,512
"""
import contextlib
import logging
from unittest import mock

import torch
from timing import run_examples, run_parser, timed  # benchmarks/timing.py

import advbench.attacks.square as square_module

log = logging.getLogger("benchmark")


def main():
    parser = run_parser(__doc__)
    parser.add_argument("--queries", type=int, default=5000, help="Square's queries (default 5000, as AutoAttack)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating (default 2)")
    parser.add_argument("--batch-sizes", default=None, help="windowed only, in batches of each of these sizes")
    args = parser.parse_args()
    model, x, y, eps, cfg, _ = run_examples(args.checkpoint, args.n_examples, args.eps, args.threads)
    cpu = torch.device("cpu")
    log.info("%s, %d test examples, Linf eps=%s, %d queries, CPU, %d thread(s), torch %s", cfg.model._target_,
             len(y), args.eps or cfg.eps, args.queries, args.threads, torch.__version__)

    if args.batch_sizes:
        return batch_sizes(model, x, y, eps, args)

    def run():
        return square_module.square(model, x, y, "linf", eps, n_queries=args.queries,
                                    generator=torch.Generator().manual_seed(0))

    times, found = {"windowed": [], "whole": []}, {}
    for _ in range(args.repeats):
        for mode in times:
            whole = mock.patch.object(square_module.Windowed, "of", classmethod(lambda cls, model: None))
            with whole if mode == "whole" else contextlib.nullcontext():
                found[mode], seconds = timed(run, cpu)
            times[mode].append(seconds)
    with torch.no_grad():
        robust = {mode: (model(adv).argmax(1) == y).float().mean().item() for mode, adv in found.items()}
    for mode in times:
        log.info("%-9s %s s (fastest %.2f s), robust accuracy %.2f%%", mode,
                 ", ".join(f"{t:.2f}" for t in times[mode]), min(times[mode]), 100 * robust[mode])
    differ = (found["windowed"] != found["whole"]).flatten(1).any(1)
    log.info("whole / windowed time (fastest of each): %.2fx; examples whose points differ: %d of %d",
             min(times["whole"]) / min(times["windowed"]), int(differ.sum()), len(y))


def batch_sizes(model, x, y, eps, args):
    """Windowed Square on ``x`` in batches of each size in ``args.batch_sizes``: seconds per example."""
    for size in [int(v) for v in args.batch_sizes.split(",")]:
        def run():
            return torch.cat([square_module.square(model, xb, yb, "linf", eps, n_queries=args.queries,
                                                   generator=torch.Generator().manual_seed(0))
                              for xb, yb in zip(x.split(size), y.split(size))])
        found, seconds = timed(run, torch.device("cpu"))
        with torch.no_grad():
            robust = (model(found).argmax(1) == y).float().mean().item()
        log.info("batch %4d: %.2f s, %.1f ms per example, robust accuracy %.2f%%", size, seconds,
                 1e3 * seconds / len(y), 100 * robust)


if __name__ == "__main__":
    main()
