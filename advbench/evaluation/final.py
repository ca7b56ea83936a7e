"""The evaluation that ends every training run and makes up ``job=eval``: the test split under attack, per-example
flags, sanity checks, the robustness curve and example images."""
import csv
import io
import logging

import numpy as np
import torch

from advbench.data.loaders import to_unit
from advbench.eps import parse_eps
from advbench.evaluation.sanity import sanity_checks
from advbench.runtime import readable
from advbench.runtime.outputs import atomic_write

log = logging.getLogger(__name__)


def save_flags(path, flags: dict) -> None:
    """Per-example flags as ``robust_flags.npz``: ``clean``, one array per attack, and ``worst_case``."""
    arrays = {name: f.numpy() for name, f in flags.items()}
    arrays["worst_case"] = np.logical_and.reduce(list(arrays.values()))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def broken_by(flags: dict, n: int) -> list:
    """For each of the first ``n`` examples: which attack broke it first ('' if none did or it was wrong clean)."""
    names = [name for name in flags if name != "clean"]
    return [next((f"by {name}" for name in names if flags["clean"][i] and not flags[name][i]), "")
            for i in range(n)]


def robustness_curve(model, x, targets, plan, evaluator, out, main: dict) -> list:
    """The task's clean and robust numbers at each eps of ``eval.eps_list``; robustness_curve.csv and .png. The
    run's own eps is the main evaluation's point itself; every other eps starts from the same seed."""
    clean_key, robust_key = plan.task.metrics
    rows = []
    for eps in plan.curve_eps():
        if parse_eps(eps) == parse_eps(plan.eps):
            summary = main
        else:
            torch.manual_seed(plan.seed)
            summary = evaluator.evaluate(model, x, targets, plan.attacks(eps))
        by_attack = summary[f"{robust_key}_by_attack"]
        rows.append({"eps": str(eps), "eps_value": parse_eps(eps), clean_key: summary[clean_key], **by_attack,
                     robust_key: summary[robust_key]})
        log.info("eps=%s: %s %s (%s)", eps, robust_key, readable.number(robust_key, summary[robust_key]),
                 ", ".join(f"{name} {readable.number(robust_key, v)}" for name, v in by_attack.items()))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "robustness_curve.csv", lambda f: f.write(text.getvalue().encode()))
    from advbench.evaluation.plots import plot_robustness_curve  # matplotlib: 0.5 s, not paid by a refusal
    plot_robustness_curve(rows, list(plan.attacks(plan.eps_list[0])), plan.task.metrics, out / "robustness_curve.png",
                          evaluator.cascade, parse_eps(plan.eps), plan.subject)
    return rows


def final_evaluation(model, test: tuple, plan, evaluator, out) -> dict:
    """Evaluate ``model`` on the first ``eval.n_examples`` test examples and write the evaluation's files."""
    x, targets = (t[:plan.n_examples] for t in test)
    attacks = plan.attacks()
    keep = min(plan.save_examples, len(x))
    outcome = evaluator.run(model, x, targets, attacks, keep, report=True)
    flags = outcome.flags
    if keep:
        x_adv = outcome.kept.to(evaluator.device)
        clean = to_unit(x[:keep]).to(evaluator.device)
        plan.task.plot_examples(clean, x_adv, targets[:keep], evaluator.predict(model, clean),
                                evaluator.predict(model, x_adv), out / "adversarial_examples.png",
                                broken_by(flags, keep),
                                f"{plan.subject + ': ' if plan.subject else ''}{', '.join(attacks)} at eps={plan.eps}")
    save_flags(out / "robust_flags.npz", flags)
    results = plan.task.summarize(flags, outcome.records) | {
        "cascade": evaluator.cascade,
        "attacks": {name: a.settings() for name, a in attacks.items()},
    }
    results["sanity"] = sanity_checks(model, x, targets, attacks, flags, plan.sanity, evaluator)
    if plan.eps_list:
        results["robustness_curve"] = robustness_curve(model, x, targets, plan, evaluator, out, results)
    return results
