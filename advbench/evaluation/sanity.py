"""Checks that guard against false robustness (Carlini et al. 2019; Croce & Hein 2020), run on a test sample."""
import logging

from advbench.attacks.gradients import as_input, attack_mode, loss_and_grad
from advbench.attacks.spec import make_attack
from advbench.data.loaders import to_unit
from advbench.tasks import worst_case

log = logging.getLogger(__name__)


def sanity_checks(model, x, targets, attacks: dict, flags: dict, s, evaluator) -> dict:
    """Run the checks (settings ``s``: eval.sanity) on the first ``s.sample`` examples; warn and return what they
    found."""
    task = evaluator.task
    robust_key = task.metrics[1]
    n = min(s.sample, len(x))
    xs, ts = to_unit(x[:n]).to(evaluator.device), task.to(targets[:n], evaluator.device)
    found, warnings = {"n_examples": n}, []

    first, second = task.predict(model, xs), task.predict(model, xs)
    found["random_forward"] = not task.same_outputs(first, second)
    if found["random_forward"]:
        warnings.append("the forward pass is random (two eval-mode passes differ): attacks need EOT, and "
                        "robust accuracy is likely overestimated")
    found["outputs_probabilities"] = task.probabilities(first)
    if found["outputs_probabilities"]:
        warnings.append("the model outputs probabilities (non-negative rows summing to 1), not logits: "
                        "cross-entropy on them masks gradients; remove the final softmax")

    found["zero_grad_frac"] = None  # token ids have no input gradient: text skips this check
    if xs.is_floating_point():
        objective = task.objective()
        with attack_mode(model):
            xg, tg = as_input((xs, ts))  # the caller's inference-mode tensors cannot enter autograd
            grad = loss_and_grad(model, xg, lambda outputs: objective(outputs, tg))[2]
        found["zero_grad_frac"] = (grad.flatten(1).abs().amax(1) == 0).float().mean().item()
    if found["zero_grad_frac"] is not None and found["zero_grad_frac"] > s.zero_grad_frac:
        warnings.append(f"the input gradient is exactly zero for {found['zero_grad_frac']:.0%} of examples "
                        "(gradient masking or saturated logits): gradient attacks cannot be trusted here")

    if len(attacks) > 1:  # each attack alone, on the same sample: the last listed should be the strongest
        alone = evaluator.evaluate(model, x[:n], targets[:n], attacks, cascade=False)[f"{robust_key}_by_attack"]
        strongest = list(attacks)[-1]
        found[f"{robust_key}_alone"] = alone
        if alone[strongest] > min(alone.values()):
            weaker = min(alone, key=alone.get)
            warnings.append(f"the strongest attack ({strongest}, listed last) leaves {alone[strongest]:.1%} "
                            f"robust, more than {weaker} ({alone[weaker]:.1%}): check the attacks' settings")

    apgd = [a for a in attacks.values() if a.name == "apgd"]
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
