"""FAB-T: exact on a linear classifier, stays in the eps ball, leaves the model as it was, matches the reference."""
# ruff: noqa: F811  (the fixtures imported from aa_fixtures are parameters of the tests)
import pytest
import torch

from aa_fixtures import digits, mixed_mode_copy, mlp, reference  # noqa: F401  (fixtures)
from advbench.attacks import fab
from advbench.attacks.fab import fab_targeted, project_to_hyperplane

NORMS = {"linf": lambda t: t.flatten(1).abs().amax(1), "l2": lambda t: t.flatten(1).norm(dim=1)}
DUAL = {"linf": lambda w: w.abs().sum(), "l2": lambda w: w.norm()}  # distance to w.x = c is |w.x - c| / dual(w)


class LinearBinary(torch.nn.Module):
    """logits = [0, w.(x - 1/2)]: class 1 on one side of a hyperplane through the centre of the box."""

    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x):
        score = (x.flatten(1) - 0.5) @ self.w
        return torch.stack((torch.zeros_like(score), score), 1)


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 0.5)])
def test_fab_is_exact_on_a_linear_binary_classifier(norm, eps):
    g = torch.Generator().manual_seed(0)
    w = (torch.rand(64, generator=g) + 0.5) * torch.where(torch.rand(64, generator=g) < 0.5, -1.0, 1.0)
    ratios = torch.tensor([0.3, 0.6, 0.9, 0.97, 1.03, 1.1, 1.5, 2.0]).repeat(4)  # distance to boundary / eps
    x = 0.45 + 0.1 * torch.rand(len(ratios), 64, generator=g)
    # Move each point away from the boundary (steepest in the norm) until its distance is ratio * eps; the box
    # never binds here, so that distance is the minimal one FAB's projection finds.
    direction = w.sign() if norm == "linf" else w / w.norm()
    shift = (x - 0.5) @ w / (direction @ w) + ratios * eps * DUAL[norm](w) / (direction @ w)
    x = (x - shift[:, None] * direction).view(-1, 1, 8, 8)
    model = LinearBinary(w)
    y = torch.zeros(len(x), dtype=torch.long)
    distance = -model(x)[:, 1] / DUAL[norm](w)
    assert torch.allclose(distance, ratios * eps, rtol=1e-4) and x.min() > 0.2 and x.max() < 0.8
    x_adv = fab_targeted(model, x, y, norm, eps)
    broken = model(x_adv).argmax(1) == 1
    assert torch.equal(broken, ratios <= 1.0)
    # The first step overshoots the boundary by eta = 1.05 and later ones only come closer.
    found = NORMS[norm](x_adv - x)[broken]
    assert (found >= distance[broken] * (1 - 1e-4)).all() and (found <= 1.05 * distance[broken] + 1e-6).all()
    assert torch.equal(x_adv[~broken], x[~broken])


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.8)])
def test_fab_stays_in_the_ball_and_the_box(mlp, digits, norm, eps):
    x, y = digits[1][0][:64], digits[1][1][:64]
    x_adv = fab_targeted(mlp, x, y, norm, eps, steps=30)
    assert (NORMS[norm](x_adv - x) <= eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    broken = mlp(x_adv).argmax(1) != y
    assert broken.sum() >= 10
    assert torch.equal(x_adv[~broken], x[~broken])  # the others come back clean


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_fab_leaves_the_model_as_it_was(mlp, digits, context):
    model, modes = mixed_mode_copy(mlp)
    x, y = digits[1][0][:16], digits[1][1][:16]
    with context():
        x_adv = fab_targeted(model, x, y, "linf", 0.1, steps=5, n_target_classes=2)
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not x_adv.requires_grad and x_adv.shape == x.shape
    assert (model(x_adv).argmax(1) != y).any()  # the gradients did flow


@pytest.mark.parametrize("solver", ["newton", "sorted"])
def test_projection_matches_the_reference(reference, solver, monkeypatch):
    """Both solvers for the step size (Newton's method on the CPU, the sort elsewhere) against the reference's
    projections, on rows near and out of reach, with pixels at the box's bounds (Fashion-MNIST's background),
    ignored coordinates, a row already on its hyperplane and one whose weights are all zero."""
    if solver == "sorted":  # run the GPU's solver on the CPU
        monkeypatch.setattr(fab, "_newton_gamma", fab._sorted_gamma)
    projections = pytest.importorskip(reference[0].__name__.rsplit(".", 1)[0] + ".fab_projections")
    g = torch.Generator().manual_seed(0)
    t, w = torch.rand(300, 64, generator=g), torch.randn(300, 64, generator=g)
    t[100:200, :30] = (torch.rand(100, 30, generator=g) > 0.5).float()  # at the bounds: no room one way
    w[:50, :20] = 0  # coordinates the hyperplane ignores
    w[60] = 0
    b = (w * t).sum(1) + torch.randn(300, generator=g) * torch.logspace(-2, 1.5, 300)  # near and out of reach
    b[70] = (w[70] * t[70]).sum()
    for norm, theirs in [("linf", projections.projection_linf), ("l2", projections.projection_l2)]:
        ours = project_to_hyperplane(t, w, b, norm)
        assert torch.allclose(NORMS[norm](ours), NORMS[norm](theirs(t, w, b)), atol=1e-5, rtol=1e-4)
        assert (t + ours).min() >= -1e-6 and (t + ours).max() <= 1 + 1e-6
        reached = (b >= w.clamp(max=0).sum(1)) & (b <= w.clamp(min=0).sum(1))  # the box meets the hyperplane
        assert reached.sum() > 100 and (~reached).sum() > 5
        assert torch.allclose(((t + ours) * w).sum(1)[reached], b[reached], atol=1e-4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_out_of_reach_goes_to_the_corner(norm):
    """A hyperplane far outside the box: every coordinate the hyperplane reads moves to its bound, the others stay
    (no inf * 0 = NaN from a step size that overflows)."""
    t, w = torch.full((2, 4), 0.25), torch.tensor([[1.0, -2.0, 0.0, 0.5]] * 2)
    d = project_to_hyperplane(t, w, torch.tensor([1e9, -1e9]), norm)
    assert torch.equal(t + d, torch.tensor([[1.0, 0.0, 0.25, 1.0], [0.0, 1.0, 0.25, 0.0]]))


def test_newton_solver_stops_on_the_final_piece(monkeypatch):
    """Newton's method takes a handful of iterations, not one per coordinate, and the same step as the sort."""
    g = torch.Generator().manual_seed(1)
    t, w = torch.rand(64, 784, generator=g), torch.randn(64, 784, generator=g)
    b = (w * t).sum(1) - torch.rand(64, generator=g) * w.abs().sum(1) * 0.05
    calls = []
    real = torch.Tensor.all
    monkeypatch.setattr(torch.Tensor, "all", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    newton = project_to_hyperplane(t, w, b, "linf")
    monkeypatch.undo()
    assert 1 <= len(calls) <= 10
    monkeypatch.setattr(fab, "_newton_gamma", fab._sorted_gamma)
    assert torch.allclose(newton, project_to_hyperplane(t, w, b, "linf"), atol=1e-6)


@pytest.mark.parametrize("norm, eps", [("linf", 0.08), ("l2", 0.6)])
def test_fab_is_as_strong_as_the_reference(mlp, digits, reference, norm, eps):
    x, y = digits[1][0][:300], digits[1][1][:300]
    theirs = reference[0].FABAttack_PT(mlp, norm={"linf": "Linf", "l2": "L2"}[norm], n_restarts=1, n_iter=100,
                                       eps=eps, seed=0, targeted=True, n_target_classes=9)
    ref_acc = (mlp(theirs.perturb(x, y)).argmax(1) == y).float().mean().item()
    x_adv = fab_targeted(mlp, x, y, norm, eps)
    acc = (mlp(x_adv).argmax(1) == y).float().mean().item()
    assert acc <= ref_acc + 0.02
    assert acc < (mlp(x).argmax(1) == y).float().mean().item() - 0.2  # the comparison means something
