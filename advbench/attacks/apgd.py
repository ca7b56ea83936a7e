"""APGD (Croce & Hein 2020): PGD with momentum and a step size halved at checkpoints when progress stalls.

Written for any threat model of ``threats.py`` (Linf and L2), with the task's objectives: for classification the
cross-entropy or the DLR loss, untargeted or targeted (APGD-T: the DLR-targeted loss towards each of the top
``n_targets`` wrong classes in turn).
"""
import torch

from advbench.attacks.gradients import as_input, attack_mode, loss_and_grad
from advbench.attacks.rows import next_targets


def averaged(model, x, loss_fn, eot: int = 1):
    """``loss_and_grad`` averaged over ``eot`` forward passes (expectation over transformation, Athalye et al. 2018:
    a randomized model's gradient is its mean); the outputs of the last pass."""
    losses, outputs, grad = loss_and_grad(model, x, loss_fn)
    for _ in range(eot - 1):
        more_losses, outputs, more = loss_and_grad(model, x, loss_fn)
        losses, grad = losses + more_losses, grad + more
    return (losses / eot, outputs, grad / eot) if eot > 1 else (losses, outputs, grad)


def apgd_run(model, x, y, threat, steps: int, task, objective_for, rho: float = 0.75, eot: int = 1, groups=None):
    """One APGD run from a random start; returns (adversarial examples, fooled flags). ``objective_for(rows)``
    gives the per-example loss ``objective(outputs, targets)`` of those rows of ``x``; ``groups``, where rows are
    copies of one example (APGD-T's target classes packed together), gives each row's example.

    An example stops being attacked at the step that first fools the model: its result is that point, which no
    later step can change (the reference runs every example to the last step); so do the other rows of its
    group, whose example is broken."""
    n, shape = len(x), (-1,) + (1,) * (x.dim() - 1)
    x_out, fooled_out = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
    rows = torch.arange(n, device=x.device)  # the examples still attacked, as rows of x
    objective = objective_for(rows)
    eps_step = torch.full((n,), 2.0 * threat.eps, device=x.device)  # the paper's initial step, 2 eps
    x_adv = threat.init(x)
    losses, outputs, grad = averaged(model, x_adv, lambda out: objective(out, y), eot)
    x_best, loss_best, grad_best, x_prev = x_adv.clone(), losses.clone(), grad.clone(), x_adv.clone()
    # Checkpoints: the first after 22% of the steps, then periods shrinking by 3% down to 6% (the paper's p_j).
    next_check, decrease, min_period = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    increases = torch.zeros(n, device=x.device)
    loss_at_check, reduced_at_check = loss_best.clone(), torch.ones(n, dtype=torch.bool, device=x.device)
    since_check = 0
    for i in range(steps + 1):
        fooled = ~task.correct(outputs, y)
        if fooled.any():
            x_out[rows[fooled]], fooled_out[rows[fooled]] = x_adv[fooled], True
            done = fooled if groups is None else torch.isin(groups[rows], groups[rows[fooled]])
            x_out[rows[done & ~fooled]] = x_best[done & ~fooled]
            keep = ~done
            (rows, x, x_adv, x_prev, grad, losses, x_best, loss_best, grad_best, eps_step, increases, loss_at_check,
             reduced_at_check) = (t[keep] for t in (rows, x, x_adv, x_prev, grad, losses, x_best, loss_best,
                                                    grad_best, eps_step, increases, loss_at_check, reduced_at_check))
            y, objective = task.index(y, keep.nonzero().squeeze(1)), objective_for(rows)
        if i == steps or not rows.numel():
            break
        momentum = 0.75 if i > 0 else 1.0
        z = threat.project(threat.step(x_adv, grad, eps_step.view(shape)), x)
        x_new = threat.project(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev), x)
        x_prev, x_adv = x_adv, x_new
        new_losses, outputs, grad = averaged(model, x_adv, lambda out: objective(out, y), eot)
        increases += (new_losses > losses).float()
        losses = new_losses
        better = losses > loss_best
        x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], losses[better]
        since_check += 1
        if since_check == next_check:
            # Halve the step where the loss rose in fewer than rho of the steps since the last checkpoint,
            # or where the step was kept last time and the best loss has not moved since; restart from the best.
            stalled = (increases <= rho * since_check) | (~reduced_at_check & (loss_at_check >= loss_best))
            eps_step[stalled] /= 2
            x_adv[stalled], grad[stalled] = x_best[stalled], grad_best[stalled]
            reduced_at_check, loss_at_check = stalled, loss_best.clone()
            increases.zero_()
            since_check, next_check = 0, max(next_check - decrease, min_period)
    x_out[rows] = x_best
    return x_out, fooled_out


def apgd(model, x, y, threat, task, steps: int = 100, loss: str = "ce", targeted: bool = False,
         n_targets: int = 9, restarts: int = 1, bn_mode: str = "eval", eot: int = 1) -> torch.Tensor:
    """APGD (Croce & Hein 2020) in the threat model's norm; APGD-T when ``targeted``; worst case kept per example.

    Every restart (and every target class) attacks only the examples that are still classified correctly;
    APGD-T runs as many target classes side by side as the evaluation's batch holds (``attacks/rows.py``).
    """
    with attack_mode(model, bn_mode):
        x, y = as_input(x), task.detach(y)
        x_out = x.clone()
        remaining = torch.arange(len(x), device=x.device)
        ranked = task.ranked_wrong(model, x, y, n_targets) if targeted else None
        for restart in range(restarts):
            pending = list(range(ranked.shape[1])) if targeted else [None]
            while pending and remaining.numel():
                # As many target classes as fit in the evaluation's batch run side by side, one row per example
                # and target: once examples drop out, a GPU's steps stay large (nine targets one after another
                # would be 900 small steps). Rows are ordered target by target.
                group, rows, pending = next_targets(pending, remaining, len(x))
                # APGD-T: the targeted DLR loss towards the (t+2)-th ranked class, skipping the true one
                target = torch.cat([ranked[remaining, t] for t in group]) if targeted else None
                objective_for = lambda picked, target=target: task.objective(  # noqa: E731
                    loss, target=None if target is None else target[picked])
                x_adv, fooled = apgd_run(model, x[rows], task.index(y, rows), threat, steps, task, objective_for,
                                         eot=eot, groups=rows if len(group) > 1 else None)
                fooled_rows = fooled.nonzero().squeeze(1)
                x_out[rows[-remaining.numel():]] = x_adv[-remaining.numel():]  # not fooled: the last target's
                x_out[rows[fooled_rows]] = x_adv[fooled_rows]
                remaining = remaining[~fooled.view(len(group), -1).any(0)]
        return x_out
