"""Checks that guard against false robustness (Carlini et al. 2019; Croce & Hein 2020), run on a test sample.

Each check tests one symptom of an evaluation that overestimates robustness and warns only when it sees it: a
random forward pass, probabilities for logits, a zero input gradient, an attack that raises the score above clean,
one step beating many, a gradient-free attack beating every gradient attack, PGD-20 far weaker than APGD. The
order of the attacks is no symptom: under the cascade a later attack may find nothing left to break.
"""
import logging

from advbench.attacks.gradients import as_input, attack_mode, loss_and_grad
from advbench.attacks.spec import make_attack
from advbench.data.loaders import to_unit
from advbench.runtime.amp import autocast
from advbench.tasks import worst_case

log = logging.getLogger(__name__)

# How far one attack alone may beat another that should be at least as strong, on the same sample, before a check
# calls it a symptom (in the task's robust metric): SanityConf.max_pgd_gap's 5 points, 10 of the 200 examples,
# above the noise of random starts and of set metrics (mAP, mIoU) that do not split over images. A constant, not a
# SanityConf field: config.py is not this module's to change.
MARGIN = 0.05
GRADIENT_FREE = ("square",)  # reads only the model's scores: blind gradients do not blind it
GRADIENT = ("fgsm", "fgm", "pgd", "apgd", "fab")  # follow the input gradient
ONE_STEP = ("fgsm", "fgm", "pgd")  # with steps=1
MANY_STEPS = ("pgd", "apgd")  # with steps>1: never weaker than one step of the same ascent on a sound model
COMPARED = ("above_clean", "one_step_gap", "gradient_free_gap")  # results keys: the largest gap each check saw


def sanity_checks(model, x, targets, attacks: dict, flags: dict, s, evaluator) -> dict:
    """Run the checks (settings ``s``: eval.sanity) on the first ``s.sample`` examples; warn and return what they
    found (None where a check does not apply)."""
    task = evaluator.task
    robust_key = task.metrics[1]
    n = min(s.sample, len(x))
    xs, ts = to_unit(x[:n]).to(evaluator.device), task.to(targets[:n], evaluator.device)
    found, warnings = {"n_examples": n}, []

    first, second = task.predict(model, xs), task.predict(model, xs)
    found["random_forward"] = not task.same_outputs(first, second)
    if found["random_forward"]:
        warnings.append("the forward pass is random (two eval-mode passes on the same inputs differ): an attack "
                        "that draws once overestimates robustness; evaluate with EOT (eval=autoattack_rand, or "
                        "attack.eot on apgd)")
    found["outputs_probabilities"] = task.probabilities(first)
    if found["outputs_probabilities"]:
        warnings.append("the model outputs probabilities (non-negative rows summing to 1), not logits: "
                        "cross-entropy on them masks gradients; remove the final softmax")

    found["zero_grad_frac"] = None  # token ids have no input gradient: text skips this check
    if xs.is_floating_point():
        objective = task.objective()
        with attack_mode(model), autocast(evaluator.device, evaluator.amp):  # the gradients the attacks see
            xg, tg = as_input((xs, ts))  # the caller's inference-mode tensors cannot enter autograd
            grad = loss_and_grad(model, xg, lambda outputs: objective(outputs, tg))[2]
        found["zero_grad_frac"] = (grad.flatten(1).abs().amax(1) == 0).float().mean().item()
    if found["zero_grad_frac"] is not None and found["zero_grad_frac"] > s.zero_grad_frac:
        warnings.append(f"the input gradient of the attack loss is exactly zero for {found['zero_grad_frac']:.0%} "
                        f"of {n} examples (more than eval.sanity.zero_grad_frac={s.zero_grad_frac:g}): gradient "
                        "attacks cannot move them (a non-differentiable step such as rounding, or saturated "
                        "logits); attack a differentiable stand-in (BPDA) and add a gradient-free attack (square)")

    found[f"{robust_key}_alone"] = None
    found |= dict.fromkeys(COMPARED)
    if len(attacks) > 1:  # each attack alone on the same sample, for the comparisons between attacks
        summary = evaluator.evaluate(model, x[:n], targets[:n], attacks, cascade=False)
        found[f"{robust_key}_alone"] = summary[f"{robust_key}_by_attack"]
        compared, seen = compare_alone(summary[f"{robust_key}_by_attack"], summary[task.metrics[0]], attacks, n,
                                       robust_key)
        found |= compared
        warnings += seen

    found["pgd20_gap"] = None
    apgd = [a for a in attacks.values() if getattr(a, "name", None) == "apgd"]
    if apgd:  # an AutoAttack-style evaluation: PGD-20 alone must not look much more robust
        eps, norm = apgd[0].eps, apgd[0].norm
        pgd20 = make_attack("pgd", norm, eps, steps=20, random_start=True, task=task)
        pgd_acc = evaluator.evaluate(model, x[:n], targets[:n], {"pgd20": pgd20}, cascade=True)[robust_key]
        found["pgd20_gap"] = pgd_acc - worst_case(flags)[:n].double().mean().item()
        if found["pgd20_gap"] > s.max_pgd_gap:
            warnings.append(f"PGD-20 leaves {found['pgd20_gap']:.1%} more examples robust than the APGD "
                            "evaluation: a common sign of gradient masking; report the stronger evaluation")

    for message in warnings:
        log.warning("sanity check: %s", message)
    return found | {"warnings": warnings}


def compare_alone(alone: dict, clean: float, attacks: dict, n: int, metric: str) -> tuple:
    """The checks between attacks from each one's number ``alone`` and ``clean`` on the same ``n`` examples:
    ({check: its largest gap, None where no pair applies}, warnings). Only attacks of one threat (eps, norm, target,
    terms) that ascend the loss against the truth compare."""
    found, warnings = dict.fromkeys(COMPARED), []
    ascending = {name: a for name, a in attacks.items() if alone.get(name) is not None and _ascends(a)}

    if ascending and clean is not None:
        worst = max(ascending, key=alone.get)
        found["above_clean"] = alone[worst] - clean
        if found["above_clean"] > MARGIN:
            warnings.append(f"each attack alone on the same {n} examples: {worst} raises {metric} to "
                            f"{alone[worst]:.1%}, above clean ({clean:.1%}; margin {100 * MARGIN:g} points); an "
                            "attack ascending the loss cannot improve the model: check its loss and terms, or the "
                            "task's metric")

    for key, weaker, stronger, labels, do in (
            ("one_step_gap", _one_step, _many_steps, ("one-step", "iterative"),
             "more steps of the same ascent must not do worse: check the iterative attack's step size and steps, "
             "then the model for gradient masking (Athalye et al. 2018)"),
            ("gradient_free_gap", _gradient_free, _gradient, ("gradient-free", "the best gradient attack"),
             "gradients do not lead the attacks here, a classic sign of gradient masking (Carlini et al. 2019); "
             "report the worst case over all attacks and try an adaptive attack (BPDA, EOT)")):
        gaps = []
        for group in _groups(ascending).values():
            low = [name for name in group if weaker(attacks[name])]
            high = [name for name in group if stronger(attacks[name])]
            if low and high:  # each side's strongest
                weak, strong = min(low, key=alone.get), min(high, key=alone.get)
                gaps.append((alone[strong] - alone[weak], weak, strong))
        if gaps:
            gap, weak, strong = max(gaps)
            found[key] = gap
            if gap > MARGIN:
                warnings.append(f"each attack alone on the same {n} examples: {labels[0]} {weak} leaves {metric} "
                                f"{alone[weak]:.1%}, {100 * gap:.1f} points below {labels[1]} {strong} "
                                f"({alone[strong]:.1%}; margin {100 * MARGIN:g} points); {do}")
    return found, warnings


def _ascends(a) -> bool:
    """Whether attack ``a`` is a known kind ascending the task's loss against the true targets (TOG's goals and
    user callables compare with nothing)."""
    return getattr(a, "name", None) in GRADIENT + GRADIENT_FREE and a.goal == "truth" and not a.descend


def _groups(attacks: dict) -> dict:
    """The attacks by threat (norm, eps, what they perturb, loss terms): only those within one compare."""
    groups = {}
    for name, a in attacks.items():
        terms = tuple(sorted(a.terms.items())) if a.terms else None
        groups.setdefault((a.norm, round(float(a.eps), 9), a.target, terms), []).append(name)
    return groups


def _one_step(a) -> bool:
    return a.name in ONE_STEP and a.steps == 1


def _many_steps(a) -> bool:
    # targeted PGD aims at one random class: weaker than untargeted by design, so it sets no bar
    return a.name in MANY_STEPS and a.steps > 1 and (a.name == "apgd" or not a.targeted)


def _gradient_free(a) -> bool:
    return a.name in GRADIENT_FREE


def _gradient(a) -> bool:
    return a.name in GRADIENT
