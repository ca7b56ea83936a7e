"""Square: its schedule, the eps ball, a model with masked gradients, and a cross-check against the reference."""
# ruff: noqa: F811  (the fixtures imported from aa_fixtures are parameters of the tests)
import pytest
import torch

from advbench.attacks import pgd
from advbench.tasks.classification import Classification
from advbench.attacks.threats import LinfThreat
from aa_fixtures import Counting, Quantized, digits, mixed_mode_copy, mlp, reference  # noqa: F401
from advbench.attacks.fab import fab_targeted
from advbench.attacks.square import p_selection, square

NORMS = {"linf": lambda t: t.flatten(1).abs().amax(1), "l2": lambda t: t.flatten(1).norm(dim=1)}


def accuracy(model, x, y):
    return (model(x).argmax(1) == y).float().mean().item()


def test_p_schedule_halves_at_the_reference_iterations():
    halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    for i, it in enumerate(halvings):
        assert p_selection(0.8, it, 10000) == 0.8 / 2 ** i and p_selection(0.8, it + 1, 10000) == 0.8 / 2 ** (i + 1)
    # AutoAttack's preset runs 5000 queries on the unscaled schedule; rescaled, 5000 queries cover all of it.
    assert p_selection(0.8, 4999, 5000) == 0.8 / 128 and p_selection(0.8, 4999, 5000, rescale=True) == 0.8 / 512
    assert p_selection(0.8, 26, 5000, rescale=True) == 0.8 / 4


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.8)])
def test_square_stays_in_the_ball_and_queries_only_live_examples(mlp, digits, norm, eps):
    x, y = digits[1][0][:64], digits[1][1][:64].clone()
    y[:4] = (y[:4] + 1) % 10  # wrong from the start: never queried
    model = Counting(mlp)
    x_adv = square(model, x, y, norm, eps, n_queries=200, generator=torch.Generator().manual_seed(0))
    assert (NORMS[norm](x_adv - x) <= eps + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    correct = (mlp(x).argmax(1) == y).sum().item()
    sizes = model.sizes
    assert sizes[0] == len(x) and sizes[1] == correct  # the clean check, then the start on the correct ones only
    search = sizes[2:-1]  # at most the live ones (a candidate equal to its current point is not queried)
    assert max(search) <= correct and search[-1] < correct  # the fooled drop out
    broken = mlp(x_adv).argmax(1) != y
    assert broken[4:].sum() >= 5 and torch.equal(x_adv[~broken], x[~broken])
    assert torch.equal(x_adv[:4], x[:4])


def test_square_is_repeatable_and_keeps_off_the_global_rng_given_a_generator(mlp, digits):
    x, y = digits[1][0][:32], digits[1][1][:32]
    state = torch.get_rng_state()
    runs = [square(mlp, x, y, "l2", 0.8, n_queries=50, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(3)
    first = square(mlp, x, y, "linf", 0.1, n_queries=50)
    torch.manual_seed(3)
    assert torch.equal(first, square(mlp, x, y, "linf", 0.1, n_queries=50))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_square_leaves_the_model_as_it_was(mlp, digits, context):
    model, modes = mixed_mode_copy(mlp)
    x, y = digits[1][0][:16], digits[1][1][:16]
    with context():
        x_adv = square(model, x, y, "linf", 0.1, n_queries=20)
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not x_adv.requires_grad and x_adv.shape == x.shape


def test_square_breaks_a_model_whose_gradients_are_masked(mlp, digits):
    model = Quantized(mlp).eval()  # zero input gradient everywhere: gradient attacks are blind
    x, y = digits[1][0][:300], digits[1][1][:300]
    eps = 0.1
    clean = accuracy(model, x, y)
    torch.manual_seed(0)
    pgd_acc = accuracy(model, pgd(model, x, y, LinfThreat(eps, eps / 8), steps=20, task=Classification(10)), y)
    fab_acc = accuracy(model, fab_targeted(model, x, y, "linf", eps, steps=20), y)
    square_acc = accuracy(model, square(model, x, y, "linf", eps, n_queries=500), y)
    assert pgd_acc >= clean - 0.03 and fab_acc >= clean - 0.03
    assert square_acc <= min(pgd_acc, fab_acc) - 0.15


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.8)])
def test_square_is_as_strong_as_the_reference(mlp, digits, reference, norm, eps):
    x, y = digits[1][0][:300], digits[1][1][:300]
    theirs = reference[1].SquareAttack(mlp, norm={"linf": "Linf", "l2": "L2"}[norm], n_queries=1000, eps=eps,
                                       p_init=0.8, n_restarts=1, seed=0, resc_schedule=False)
    ref_acc = accuracy(mlp, theirs.perturb(x, y), y)
    # The reference's seed: our draws are the reference's, in its order, so the searches should coincide (with
    # other seeds both move by a few points over 300 examples: one window position serves the whole batch).
    torch.manual_seed(0)
    acc = accuracy(mlp, square(mlp, x, y, norm, eps, n_queries=1000), y)
    assert acc <= ref_acc + 0.02
    assert acc < accuracy(mlp, x, y) - 0.2
