"""PGD (Madry et al. 2018): the one loop every threat model and every task shares; FGSM and FGM are one step of it."""
import torch

from advbench.attacks.gradients import as_input, attack_mode, loss_and_grad


def pgd(model, x, targets, threat, steps: int, task, objective=None, random_start: bool = True,
        restarts: int = 1, targeted: bool = False, bn_mode: str = "eval") -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) under any threat model; worst case kept over restarts.

    ``objective(outputs, targets)`` gives the per-example loss to ascend (default: the task's loss terms). Each
    restart attacks only the examples that ``task.correct`` still accepts after the earlier restarts. Targeted
    attacks descend the objective towards the task's random wrong goal (a random wrong class per example).
    """
    objective = objective or task.objective()
    with attack_mode(model, bn_mode):
        x, targets = as_input(x), task.detach(targets)
        x_best = x.clone()
        remaining = torch.arange(len(x), device=x.device)
        for restart in range(restarts):
            xr, tr = x[remaining], task.index(targets, remaining)
            goal = task.random_wrong(model, xr, tr) if targeted else tr
            x_adv = threat.init(xr) if random_start else xr.clone()
            for _ in range(steps):
                grad = loss_and_grad(model, x_adv, lambda outputs: objective(outputs, goal))[2]
                x_adv = threat.project(threat.step(x_adv, -grad if targeted else grad), xr)
            x_best[remaining] = x_adv
            if restart == restarts - 1:
                break
            with torch.no_grad():
                remaining = remaining[task.correct(model(x_adv), tr)]
            if remaining.numel() == 0:
                break
        return x_best
