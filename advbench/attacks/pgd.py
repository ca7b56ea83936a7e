"""PGD (Madry et al. 2018): the one loop every threat model and every task shares; FGSM and FGM are one step of it."""
import torch

from advbench.attacks.gradients import as_input, attack_mode, loss_and_grad, terms_grad


def pgd(model, x, targets, threat, steps: int, task, objective=None, random_start: bool = True,
        restarts: int = 1, goal=None, descend: bool = False, bn_mode: str = "eval",
        normalized_terms: dict | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) under any threat model; worst case kept over restarts.

    ``objective(outputs, targets)`` gives the per-example loss to ascend (default: the task's loss terms). Each
    restart attacks only the examples that ``task.correct`` still accepts after the earlier restarts. With
    ``goal(model, x, targets)`` the objective is taken against crafted targets (a random wrong class; TOG's empty
    or relabeled detections), and ``descend`` moves towards them. With ``normalized_terms`` (term -> weight) each
    term's gradient is scaled to unit L2 norm per example before the weighted sum: terms whose scales differ by
    orders of magnitude then steer the attack as their weights say; an empty mapping takes every term the model
    has, with weight 1.
    """
    objective = objective or task.objective()
    with attack_mode(model, bn_mode):
        x, targets = as_input(x), task.detach(targets)
        x_best, remaining = None, None  # None: every example (no gather and scatter in the one-restart case)
        for restart in range(restarts):
            xr, tr = (x, targets) if remaining is None else (x[remaining], task.index(targets, remaining))
            aim = goal(model, xr, tr) if goal else tr
            x_adv = threat.init(xr) if random_start else xr.clone()
            for _ in range(steps):
                if normalized_terms is not None:
                    grad = terms_grad(model, x_adv, lambda outputs: task.loss(outputs, aim), normalized_terms)
                else:
                    grad = loss_and_grad(model, x_adv, lambda outputs: objective(outputs, aim))[2]
                x_adv = threat.project(threat.step(x_adv, -grad if descend else grad), xr)
            if remaining is None:
                x_best = x_adv
            else:
                x_best[remaining] = x_adv
            if restart == restarts - 1:
                break
            with torch.no_grad():
                still = task.correct(model(x_adv), tr)
            remaining = (torch.arange(len(x), device=x.device) if remaining is None else remaining)[still]
            if remaining.numel() == 0:
                break
        return x_best
