"""Checks that guard against false robustness (Carlini et al. 2019; Croce & Hein 2020), run on a test sample."""
import logging

import torch

from advbench.attack_spec import Attack
from advbench.attacks import attack_mode, input_grad
from advbench.data import to_unit
from advbench.robust_eval import predict, robust_flags, summarize, worst_case

log = logging.getLogger(__name__)


def sanity_checks(model, x, y, attacks: dict, flags: dict, cfg, device) -> dict:
    """Run the checks on the first ``eval.sanity.sample`` examples; warn and return what they found."""
    s = cfg.eval.sanity
    n = min(s.sample, len(y))
    xs, ys = to_unit(x[:n]).to(device), y[:n].to(device)
    found, warnings = {"n_examples": n}, []

    first, second = predict(model, xs, logits=True), predict(model, xs, logits=True)
    found["random_forward"] = not torch.allclose(first, second, rtol=1e-4, atol=1e-5)
    if found["random_forward"]:
        warnings.append("the forward pass is random (two eval-mode passes differ): attacks need EOT, and "
                        "robust accuracy is likely overestimated")
    found["outputs_probabilities"] = bool((first >= 0).all() and torch.allclose(
        first.sum(1), torch.ones(n, device=first.device), atol=1e-3))
    if found["outputs_probabilities"]:
        warnings.append("the model outputs probabilities (non-negative rows summing to 1), not logits: "
                        "cross-entropy on them masks gradients; remove the final softmax")

    found["zero_grad_frac"] = None  # token ids have no input gradient: text skips this check
    if xs.is_floating_point():
        with attack_mode(model):
            grad = input_grad(model, xs, ys)
        found["zero_grad_frac"] = (grad.flatten(1).abs().amax(1) == 0).float().mean().item()
    if found["zero_grad_frac"] is not None and found["zero_grad_frac"] > s.zero_grad_frac:
        warnings.append(f"the input gradient is exactly zero for {found['zero_grad_frac']:.0%} of examples "
                        "(gradient masking or saturated logits): gradient attacks cannot be trusted here")

    if len(attacks) > 1:  # each attack alone, on the same sample: the last listed should be the strongest
        alone = summarize(robust_flags(model, x[:n], y[:n], attacks, device, cfg.amp, cfg.eval.batch_size,
                                       cascade=False))["robust_acc_by_attack"]
        strongest = list(attacks)[-1]
        found["robust_acc_alone"] = alone
        if alone[strongest] > min(alone.values()):
            weaker = min(alone, key=alone.get)
            warnings.append(f"the strongest attack ({strongest}, listed last) leaves {alone[strongest]:.1%} "
                            f"robust, more than {weaker} ({alone[weaker]:.1%}): check the attacks' settings")

    apgd = [a for a in attacks.values() if a.name == "apgd"]
    if apgd:  # an AutoAttack-style evaluation: PGD-20 alone must not look much more robust
        eps, norm = apgd[0].eps, apgd[0].norm
        pgd20 = Attack("pgd", norm, eps, 2.5 * eps / 20, steps=20, random_start=True)
        pgd_acc = summarize(robust_flags(model, x[:n], y[:n], {"pgd20": pgd20}, device, cfg.amp,
                                         cfg.eval.batch_size))["robust_acc"]
        found["pgd20_gap"] = pgd_acc - worst_case(flags)[:n].double().mean().item()
        if found["pgd20_gap"] > s.max_pgd_gap:
            warnings.append(f"PGD-20 leaves {found['pgd20_gap']:.1%} more examples robust than the APGD "
                            "evaluation: a common sign of gradient masking; report the stronger evaluation")

    for message in warnings:
        log.warning("sanity check: %s", message)
    return found | {"warnings": warnings}
