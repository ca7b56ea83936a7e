"""APGD: its losses, its strength against PGD, and a cross-check against torchattacks."""
import pytest
import torch

from advbench.tasks.classification.task import dlr_loss, dlr_targeted_loss
from advbench.attacks.spec import Attack
from helpers import predict


def robust_acc(model, attack, x, y, seed=0):
    torch.manual_seed(seed)
    return (predict(model, attack(model, x, y)) == y).float().mean().item()


def test_dlr_losses_match_their_definition():
    logits = torch.tensor([[4.0, 1.0, 3.0, 0.0, -1.0], [0.5, 2.0, 1.0, 0.0, 3.0]])
    y, target = torch.tensor([0, 1]), torch.tensor([2, 4])
    # Example 0 is correct: -(z_y - max other) / (z_1st - z_3rd); example 1 is wrong: max other is the top.
    expected = torch.tensor([-(4 - 3) / (4 - 1), -(2 - 3) / (3 - 1)])
    assert torch.allclose(dlr_loss(logits, y), expected)
    expected_t = torch.tensor([-(4 - 3) / (4 - 0.5 * (1 + 0)), -(2 - 3) / (3 - 0.5 * (1 + 0.5))])
    assert torch.allclose(dlr_targeted_loss(logits, y, target), expected_t)
    assert torch.allclose(dlr_loss(10 * logits, y), dlr_loss(logits, y))  # scale invariant


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(trained_mlp, digits, norm, eps):
    x, y = digits.test
    steps = 20
    pgd_acc = robust_acc(trained_mlp, Attack("pgd", norm, eps, 2.5 * eps / steps, steps, True), x, y)
    apgd_acc = robust_acc(trained_mlp, Attack("apgd", norm, eps, 2 * eps, steps, True), x, y)
    assert apgd_acc <= pgd_acc + 0.02  # at least as strong, up to what a random start can change


def test_apgd_targeted_dlr_breaks_examples_apgd_ce_leaves(trained_mlp, digits):
    x, y = digits.test
    ce = Attack("apgd", "linf", 0.05, 0.1, 20, True)
    cascade = [ce, Attack("apgd", "linf", 0.05, 0.1, 20, True, targeted=True, loss="dlr", n_targets=3)]
    torch.manual_seed(0)
    x_ce = ce(trained_mlp, x, y)
    alive = predict(trained_mlp, x_ce) == y
    x_t = cascade[1](trained_mlp, x[alive], y[alive])
    assert (predict(trained_mlp, x_t) != y[alive]).sum() > 0


def test_cross_check_against_torchattacks(trained_mlp, digits):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits.test
    eps, steps = 0.1, 20
    theirs_pgd = torchattacks.PGD(trained_mlp, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    theirs_apgd = torchattacks.APGD(trained_mlp, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce",
                                    seed=0)
    ours_pgd = Attack("pgd", "linf", eps, 2.5 * eps / steps, steps, True)
    ours_apgd = Attack("apgd", "linf", eps, 2 * eps, steps, True)
    torch.manual_seed(0)
    their_pgd_acc = (predict(trained_mlp, theirs_pgd(x, y)) == y).float().mean().item()
    their_apgd_acc = (predict(trained_mlp, theirs_apgd(x, y)) == y).float().mean().item()
    assert robust_acc(trained_mlp, ours_pgd, x, y) <= their_pgd_acc + 0.01
    assert robust_acc(trained_mlp, ours_apgd, x, y) <= their_apgd_acc + 0.01
