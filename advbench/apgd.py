"""APGD (Croce & Hein 2020): PGD with momentum and a step size halved at checkpoints when progress stalls.

Written for any threat model of ``threats.py`` (Linf and L2), with the cross-entropy or the DLR loss, untargeted
or targeted (APGD-T: the DLR-targeted loss towards each of the top ``n_targets`` wrong classes in turn).
"""
import torch
import torch.nn.functional as F

from advbench.attacks import as_input, attack_mode, loss_and_grad


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio, per example; scale invariant, so saturated softmax doesn't mask gradients."""
    top, idx = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_other = torch.where(idx[:, 0] == y, top[:, 1], top[:, 0])
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, per example: pushes the target's logit above the true class's."""
    top = logits.sort(dim=1, descending=True).values
    z_y, z_t = logits.gather(1, y[:, None]).squeeze(1), logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _losses(name: str, y, target):
    if target is not None:
        return lambda logits: dlr_targeted_loss(logits, y, target)
    if name == "dlr":
        return lambda logits: dlr_loss(logits, y)
    return lambda logits: F.cross_entropy(logits, y, reduction="none")


def apgd_run(model, x, y, threat, steps: int, loss: str = "ce", target=None, rho: float = 0.75):
    """One APGD run from a random start; returns (adversarial examples, fooled flags)."""
    n, shape = len(x), (-1,) + (1,) * (x.dim() - 1)
    loss_fn = _losses(loss, y, target)
    eps_step = torch.full((n,), 2.0 * threat.eps, device=x.device)  # the paper's initial step, 2 eps
    x_adv = threat.init(x)
    losses, logits, grad = loss_and_grad(model, x_adv, loss_fn)
    fooled = logits.argmax(1) != y
    x_fooled, x_best, loss_best, grad_best = x_adv.clone(), x_adv.clone(), losses.clone(), grad.clone()
    x_prev = x_adv.clone()
    # Checkpoints: the first after 22% of the steps, then periods shrinking by 3% down to 6% (the paper's p_j).
    next_check, decrease, min_period = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    increases = torch.zeros(n, device=x.device)
    loss_at_check, reduced_at_check = loss_best.clone(), torch.ones(n, dtype=torch.bool, device=x.device)
    since_check = 0
    for i in range(steps):
        momentum = 0.75 if i > 0 else 1.0
        z = threat.project(threat.step(x_adv, grad, eps_step.view(shape)), x)
        x_new = threat.project(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev), x)
        x_prev, x_adv = x_adv, x_new
        new_losses, logits, grad = loss_and_grad(model, x_adv, loss_fn)
        now_fooled = logits.argmax(1) != y
        x_fooled[now_fooled & ~fooled] = x_adv[now_fooled & ~fooled]
        fooled |= now_fooled
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
    x_fooled[~fooled] = x_best[~fooled]
    return x_fooled, fooled


def apgd(model, x, y, threat, steps: int = 100, loss: str = "ce", targeted: bool = False, n_targets: int = 9,
         restarts: int = 1, bn_mode: str = "eval") -> torch.Tensor:
    """APGD (Croce & Hein 2020) in the threat model's norm; APGD-T when ``targeted``; worst case kept per example.

    Every restart (and every target class) attacks only the examples that are still classified correctly.
    """
    with attack_mode(model, bn_mode):
        x, y = as_input(x), as_input(y)
        x_out = x.clone()
        remaining = torch.arange(len(x), device=x.device)
        if targeted:
            with torch.no_grad():
                ranked = model(x).float().sort(dim=1, descending=True).indices
            n_targets = min(n_targets, ranked.shape[1] - 1)
        runs = [(r, t) for r in range(restarts) for t in (range(n_targets) if targeted else [None])]
        for restart, t in runs:
            if remaining.numel() == 0:
                break
            xr, yr = x[remaining], y[remaining]
            target = None
            if targeted:  # the (t+2)-th ranked class, skipping the true one
                order = ranked[remaining]
                others = order[order != yr[:, None]].view(len(yr), -1)
                target = others[:, t]
            x_adv, fooled = apgd_run(model, xr, yr, threat, steps, loss, target)
            x_out[remaining] = x_adv
            remaining = remaining[~fooled]
        return x_out
