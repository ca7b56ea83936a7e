"""FAB-T (Croce & Hein 2020): the targeted fast adaptive boundary attack of AutoAttack's standard preset.

After fra31/auto-attack's ``fab_base.py``/``fab_projections.py``: each step linearizes the decision boundary between
the true and the target class, projects both the current point and the clean input onto that hyperplane within the
[0,1] box, and moves to a mix of the two (biased towards the clean input, so the perturbation stays small). A point
found adversarial is kept if it is the closest so far and then pulled back towards the clean input.
"""
import logging

import torch
import torch.nn.functional as F

from advbench.attacks.gradients import as_input, attack_mode, loss_and_grad
from advbench.attacks.rows import next_targets

log = logging.getLogger(__name__)


def _norms(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example Linf or L2 norm of a batch."""
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def project_to_hyperplane(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """The shortest step ``d`` (Linf or L2) with ``w.(t + d) = b`` and ``t + d`` in [0,1], for rows of ``t``.

    ``t`` lies in the box. Where the box cannot reach the hyperplane, the step to the box corner that gets closest
    to it. Coordinate i moves ``min(gamma * v_i, room_i)`` against ``w_i`` (``v_i = 1`` for Linf, ``|w_i|`` for
    L2: KKT), so the reachable change of ``w.t`` is a concave piecewise linear function of ``gamma`` with a
    breakpoint per coordinate, solved exactly (``_newton_gamma`` on the CPU, ``_sorted_gamma`` elsewhere).
    """
    if norm == "l2":
        w = torch.where(w.abs() > 1e-8, w, torch.zeros_like(w))  # as the reference
    excess = (w * t).sum(1) - b
    w = w * torch.where(excess >= 0, 1.0, -1.0).to(w.dtype)[:, None]  # from now on w.t must drop by |excess|
    excess = excess.abs()
    room = torch.where(w < 0, 1 - t, t)  # how far each coordinate can move in its descent direction
    aw = w.abs()
    if norm == "linf":  # v = 1: the breakpoints are the rooms
        v, breaks, rate = None, room, aw
    else:
        v = aw
        breaks = torch.where(v > 0, room / v.clamp_min(1e-30), torch.full_like(v, 1e12)).clamp(max=1e12)
        rate = aw * v
    full = aw * room  # the change of w.t from coordinate i at its bound
    gamma = (_newton_gamma if t.device.type == "cpu" else _sorted_gamma)(excess, breaks, rate, full)
    # Out of reach: every coordinate to its bound (a finite gamma, so that 0 * gamma stays 0 for L2).
    gamma = torch.where(full.sum(1) >= excess, gamma, torch.full_like(gamma, 1e12))
    return -w.sign() * torch.min(gamma[:, None] if v is None else gamma[:, None] * v, room)


def _sorted_gamma(excess, breaks, rate, full):
    """gamma with ``sum_i min(gamma * rate_i, full_i) = excess`` (``full_i = rate_i * breaks_i``) by sorting the
    breakpoints: one pass, no synchronization (a GPU's choice)."""
    # Nonnegative float32s sort in the order of their bits read as int32, and integers sort about 15% faster.
    keys = breaks.view(torch.int32) if breaks.dtype == torch.float32 else breaks
    order = keys.sort(dim=1).indices
    breaks = breaks.gather(1, order)
    gained = full.gather(1, order).cumsum(1)  # change from coordinates already at their bound
    rate = rate.gather(1, order)
    rate_from = F.pad(rate.flip(1).cumsum(1).flip(1), (0, 1))  # sum over j >= k, exact zeros
    reach = gained + breaks * rate_from[:, 1:]  # the change reached at each breakpoint: nondecreasing
    k = (reach < excess[:, None]).sum(1, keepdim=True)
    gained_before = F.pad(gained, (1, 0)).gather(1, k).squeeze(1)
    return ((excess - gained_before) / rate_from.gather(1, k).squeeze(1).clamp_min(1e-30)).clamp_min(0)


def _newton_gamma(excess, breaks, rate, full):
    """The same gamma by Newton's method from 0, which for a concave piecewise linear function never overshoots
    and is exact once an iteration stays on one linear piece: about 4 iterations of a few passes over the rows,
    2x faster than the sort on the CPU (FAB-T's projections on small_cnn)."""
    gamma, below = torch.zeros_like(excess), torch.zeros_like(excess)  # below: the change of coordinates at bound
    slope = rate.sum(1)
    for _ in range(breaks.shape[1] + 1):  # the moving set only shrinks: at most one iteration per coordinate
        gamma = gamma + ((excess - below - gamma * slope) / slope.clamp_min(1e-30)).clamp_min(0)
        moving = breaks > gamma[:, None]
        slope, last = (rate * moving).sum(1), slope
        below = (full * ~moving).sum(1)
        if bool((slope == last).all()):  # no breakpoint crossed: gamma is on its final piece
            break
    return gamma


def _logit_gap(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """z_target - z_true per example (in fp32): negative while the true class still wins."""
    logits = logits.float()
    return (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)


def _random_start(x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    # The reference's restarts: a random direction at half the eps radius, drawn on the CPU so devices agree.
    shape = (-1,) + (1,) * (x.dim() - 1)
    if norm == "linf":
        t = (2 * torch.rand(x.shape) - 1).to(x.device, x.dtype)
    else:
        t = torch.randn(x.shape).to(x.device, x.dtype)
    return (x + 0.5 * eps * t / _norms(t, norm).clamp_min(1e-12).view(shape)).clamp(0, 1)


def _fab_run(model, x0, y, target, norm, eps, steps, alpha_max, eta, beta, random_start, groups=None):
    """One FAB-T run; returns (closest adversarial points found, broken flags: found within eps). ``groups``,
    where rows are copies of one example (target classes packed together), gives each row's example: a row that
    breaks its example ends the others."""
    n, shape = len(x0), (-1,) + (1,) * (x0.dim() - 1)
    best = torch.full((n,), float("inf"), device=x0.device)
    x_best = x0.clone()
    x1 = _random_start(x0, norm, eps) if random_start else x0.clone()
    live = torch.arange(n, device=x0.device)  # examples not yet broken within eps: the rest need no more steps
    xc, yc, tc = x0, y, target
    for _ in range(steps):
        # One backward pass: the gradient of z_target - z_true, the only boundary the targeted version needs.
        diff, _, grad = loss_and_grad(model, x1, lambda z: _logit_gap(z, yc, tc))
        with torch.no_grad():
            w = grad.flatten(1)
            b = (w * x1.flatten(1)).sum(1) - diff  # the linearized boundary {z : w.z = b}
            d = project_to_hyperplane(torch.cat((x1.flatten(1), xc.flatten(1))), w.repeat(2, 1), b.repeat(2), norm)
            size = _norms(d, norm).clamp_min(1e-8)
            d_cur, d_clean = d.view(2, *x1.shape)
            # Mix in the clean input's projection, the more the farther the current point is from the boundary
            # relative to the clean input (capped at alpha_max): this keeps the perturbation small.
            alpha = (size[:len(x1)] / (size[:len(x1)] + size[len(x1):])).clamp(0, alpha_max).view(shape)
            x1 = ((x1 + eta * d_cur) * (1 - alpha) + (xc + eta * d_clean) * alpha).clamp(0, 1)
            fooled = model(x1).argmax(1) != yc
            dist = _norms(x1 - xc, norm)
            closer = fooled & (dist < best[live])
            x_best[live[closer]], best[live[closer]] = x1[closer], dist[closer]
            # Back off towards the clean input from an adversarial point, to look for a closer one.
            x1 = torch.where(fooled.view(shape), xc + beta * (x1 - xc), x1)
            keep = best[live] > eps
            if groups is not None and not keep.all():
                keep = ~torch.isin(groups[live], groups[live[~keep]])
            if not keep.all():
                live, x1, xc, yc, tc = live[keep], x1[keep], xc[keep], yc[keep], tc[keep]
            if live.numel() == 0:
                break
    return x_best, best <= eps


def fab_targeted(model, x, y, norm: str, eps: float, n_target_classes: int = 9, steps: int = 100, restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, bn_mode: str = "eval") -> torch.Tensor:
    """FAB-T (Croce & Hein 2020), Linf or L2: targeted FAB towards each of the top wrong classes in turn (as many
    side by side as the evaluation's batch holds)."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"FAB-T: norm must be 'linf' or 'l2', not {norm!r}")
    with attack_mode(model, bn_mode):
        x, y = as_input(x), as_input(y)
        x_adv = x.clone()
        with torch.no_grad():
            logits = model(x).float()
        alive = (logits.argmax(1) == y).nonzero().squeeze(1)
        ranked = logits.sort(dim=1).indices  # ascending, as the reference: column -t is the t-th highest logit
        n_targets = min(n_target_classes, logits.shape[1] - 1)
        for restart in range(restarts):
            pending = list(range(2, n_targets + 2))
            while pending and alive.numel():
                # As many targets side by side as the evaluation's batch holds (see apgd.py); restart 0 starts
                # at the clean input, so each row's run is the one it would be alone.
                group, rows, pending = next_targets(pending, alive, len(x))
                target = torch.cat([ranked[alive, -t] for t in group])
                found, broken = _fab_run(model, x[rows], y[rows], target, norm, eps, steps, alpha_max, eta, beta,
                                         random_start=restart > 0, groups=rows if len(group) > 1 else None)
                hit = broken.nonzero().squeeze(1)
                x_adv[rows[hit]] = found[hit]
                alive = alive[~broken.view(len(group), -1).any(0)]
                log.debug("FAB-T %s targets %s restart %d: %d of %d left", norm, [t - 1 for t in group], restart,
                          alive.numel(), len(x))
        return x_adv
