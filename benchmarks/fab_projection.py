"""FAB-T's projection with its two step-size solvers, Newton's method (the CPU's) and the sort (a GPU's), side by
side on one model and the same examples (a benchmark, not a test).

First the projections alone, on the inputs FAB-T hands them (captured from a run on the first test examples), then
FAB-T itself with each solver, alternating: the time of each, its robust count, and whether the points differ.

    python benchmarks/fab_projection.py <run dir> [--n-examples 64] [--targets 3] [--repeats 3] [--device cuda]

On CUDA (``--device cuda``), where FAB-T uses the sort, it measures whether Newton's method would pay there too.
"""
import contextlib
import logging
from unittest import mock

import torch
from timing import run_examples, run_parser, timed  # benchmarks/timing.py

import advbench.attacks.fab as fab

log = logging.getLogger("benchmark")
SOLVERS = {"newton": fab._newton_gamma, "sorted": fab._sorted_gamma}


@contextlib.contextmanager
def solving_by(name: str):
    """FAB-T's projections solve their step size with ``name``'s solver, on any device."""
    with mock.patch.object(fab, "_newton_gamma", SOLVERS[name]), mock.patch.object(fab, "_sorted_gamma", SOLVERS[name]):
        yield


def captured_inputs(model, x, y, eps, limit: int = 100) -> list:
    """The (t, w, b) of FAB-T's first ``limit`` projections on ``x``."""
    calls, real = [], fab.project_to_hyperplane

    def capture(t, w, b, norm):
        if len(calls) < limit:
            calls.append((t.clone(), w.clone(), b.clone()))
        return real(t, w, b, norm)

    with mock.patch.object(fab, "project_to_hyperplane", capture):
        fab.fab_targeted(model, x, y, "linf", eps, n_target_classes=1)
    return calls


def main():
    parser = run_parser(__doc__)
    parser.add_argument("--targets", type=int, default=3, help="FAB-T's target classes (default 3; AutoAttack: 9)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, x, y, eps, cfg, _ = run_examples(args.checkpoint, args.n_examples, args.eps, args.threads, device)
    log.info("%s, %d test examples, Linf eps=%s, FAB-T with %d targets, %s, %d thread(s), torch %s",
             cfg.model._target_, len(y), args.eps or cfg.eps, args.targets, device, args.threads, torch.__version__)

    inputs = captured_inputs(model, x, y, eps)
    for norm in ("linf", "l2"):
        seconds = {}
        for name in SOLVERS:
            with solving_by(name):
                _, total = timed(lambda: [fab.project_to_hyperplane(t, w, b, norm)
                                          for _ in range(args.repeats) for t, w, b in inputs], device)
                seconds[name] = total / (args.repeats * len(inputs))
        log.info("projection, %s, %d FAB-T inputs of %d rows on average: newton %.2f ms, sorted %.2f ms per call "
                 "(sorted / newton %.2fx)", norm, len(inputs), sum(len(t) for t, _, _ in inputs) // len(inputs),
                 1e3 * seconds["newton"], 1e3 * seconds["sorted"], seconds["sorted"] / seconds["newton"])

    times, found = {name: [] for name in SOLVERS}, {}
    for _ in range(args.repeats):
        for name in SOLVERS:
            with solving_by(name):
                found[name], secs = timed(lambda: fab.fab_targeted(model, x, y, "linf", eps, args.targets), device)
            times[name].append(secs)
    with torch.no_grad():
        robust = {name: int((model(adv).argmax(1) == y).sum()) for name, adv in found.items()}
    for name in times:
        log.info("FAB-T, %-6s %s s (fastest %.2f s), %d of %d robust", name,
                 ", ".join(f"{t:.2f}" for t in times[name]), min(times[name]), robust[name], len(y))
    differ = ((found["newton"] - found["sorted"]).flatten(1).abs().amax(1) > 1e-5).sum()
    log.info("sorted / newton FAB-T time (fastest of each): %.2fx; examples whose points differ by over 1e-5: %d",
             min(times["sorted"]) / min(times["newton"]), int(differ))


if __name__ == "__main__":
    main()
