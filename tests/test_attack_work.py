"""Work that cannot change an attack's result is not done: APGD drops an example at the step that fools the model,
APGD-T fills the evaluation's batch with target classes side by side, Square does not query a candidate equal to
its current point, and a one-channel convolution's input gradient takes the fast route with the same values."""
# ruff: noqa: F811  (the fixtures imported from aa_fixtures are parameters of the tests)
import pytest
import torch

import advbench.attacks.square as square_module
from advbench.attacks.apgd import apgd
from advbench.attacks.fab import fab_targeted
from advbench.attacks.gradients import attack_mode
from advbench.attacks.rows import row_budget
from advbench.attacks.grayscale_conv import fast_input_grad
from advbench.attacks.pool_first import pairs
from advbench.attacks.square import square
from advbench.attacks.threats import LinfThreat
from advbench.tasks.classification import Classification
from aa_fixtures import Counting, OpShapes, digits, mlp  # noqa: F401


def test_apgd_stops_attacking_an_example_at_the_step_that_fools_the_model(mlp, digits):
    x, y = digits[1][0][:64], digits[1][1][:64]
    model, eps, steps = Counting(mlp), 0.12, 20  # a budget that breaks most examples within a few steps
    torch.manual_seed(0)
    x_adv = apgd(model, x, y, LinfThreat(eps, 2 * eps), Classification(10), steps=steps)
    sizes = model.sizes  # the random start, then one pass per step
    with torch.no_grad():
        broken = mlp(x_adv).argmax(1) != y
    assert (x_adv - x).abs().amax() <= eps + 1e-6
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))  # never more rows than the step before
    # Rows still attacked at the last step: those no earlier step fooled; most were dropped long before.
    assert len(sizes) == steps + 1 and int((~broken).sum()) <= sizes[-1] < len(x) // 2
    assert sum(sizes) < 0.5 * len(x) * len(sizes)  # where the reference attacks all 64 rows at every step


def test_apgd_targeted_result_does_not_depend_on_the_examples_beside_it(mlp, digits):
    # Each example's run is its own (per-example steps, losses and checkpoints); dropping the fooled ones must
    # not move the others: attacking a robust example alone or in a batch that loses rows gives the same point.
    x, y = digits[1][0][:48], digits[1][1][:48]
    task, threat = Classification(10), LinfThreat(0.05, 0.1)
    torch.manual_seed(0)
    start = torch.get_rng_state()
    batch = apgd(mlp, x, y, threat, task, steps=30, loss="dlr", targeted=True, n_targets=1)
    with torch.no_grad():
        robust = (mlp(batch).argmax(1) == y) & (mlp(x).argmax(1) == y)
    assert 0 < robust.sum() < len(x)
    # Replaying the same random start on the robust examples alone: the same points, up to float rounding.
    threat_init = threat.init
    torch.set_rng_state(start)
    full_init = threat_init(x)
    threat.init = lambda xr: full_init[robust]
    alone = apgd(mlp, x[robust], y[robust], threat, task, steps=30, loss="dlr", targeted=True, n_targets=1)
    assert torch.allclose(alone, batch[robust], atol=1e-5)


def test_apgd_t_runs_as_many_targets_side_by_side_as_the_batch_holds(mlp, digits):
    x, y = digits[1][0][:40], digits[1][1][:40]
    with torch.no_grad():
        right = mlp(x).argmax(1) == y
    x, y = x[right][:20], y[right][:20]
    task, threat, steps = Classification(10), LinfThreat(1e-4, 2e-4), 5  # too small a budget to break any
    assert len(y) == 20

    def passes(budget=None):
        model = Counting(mlp)
        torch.manual_seed(0)
        if budget is None:
            apgd(model, x, y, threat, task, steps=steps, loss="dlr", targeted=True, n_targets=9)
        else:
            with row_budget(budget):
                apgd(model, x, y, threat, task, steps=steps, loss="dlr", targeted=True, n_targets=9)
        return model.sizes[1:]  # after the clean pass that ranks the targets
    assert passes() == [20] * 9 * (steps + 1)  # no room: one target after another, as the reference
    assert passes(180) == [180] * (steps + 1)  # all nine targets in one run
    assert passes(70) == [60] * 3 * (steps + 1)  # three at a time
    assert passes(10) == [20] * 9 * (steps + 1)  # a budget below the call's own batch changes nothing


class OneWayOut(torch.nn.Module):
    """Five classes; class 0 is true everywhere and only class 3, third of the wrong classes by clean logit, can
    overtake it within eps 0.1, and only where pixel 3 starts at 0.6 (where it starts at 0.3, nothing can)."""

    def forward(self, x):
        p = x.flatten(1)
        zero = torch.zeros_like(p[:, 0])
        return torch.stack([zero + 1.0, p[:, 1] + 0.2, p[:, 2] + 0.15, 10 * p[:, 3] - 5.5, zero - 1.0], 1)


@pytest.mark.parametrize("budget", [None, 8, 64])
def test_packed_targets_break_exactly_what_one_target_at_a_time_breaks(budget):
    # By construction: the breakable examples fall to the third target whichever way the targets are run.
    x = torch.full((8, 1, 1, 4), 0.5)
    x[:, 0, 0, 3] = torch.tensor([0.6, 0.3] * 4)
    y = torch.zeros(8, dtype=torch.long)
    model, task = OneWayOut(), Classification(5)
    assert (task.ranked_wrong(model, x[:1], y[:1], 4)[0, :3] == torch.tensor([1, 2, 3])).all()
    torch.manual_seed(0)
    with row_budget(budget or 8):
        x_adv = apgd(model, x, y, LinfThreat(0.1, 0.2), task, steps=10, loss="dlr", targeted=True, n_targets=4)
    assert (x_adv - x).abs().amax() <= 0.1 + 1e-6
    with torch.no_grad():
        broken = model(x_adv).argmax(1) != 0
    assert broken.tolist() == [True, False] * 4


def test_a_packed_example_broken_by_one_target_stops_being_attacked_by_the_others():
    x = torch.full((8, 1, 1, 4), 0.5)
    x[:, 0, 0, 3] = torch.tensor([0.6, 0.3] * 4)
    y = torch.zeros(8, dtype=torch.long)
    model = Counting(OneWayOut())
    torch.manual_seed(0)
    with row_budget(32):
        apgd(model, x, y, LinfThreat(0.1, 0.2), Classification(5), steps=10, loss="dlr", targeted=True,
             n_targets=4)
    sizes = model.sizes[1:]
    # 8 examples x 4 targets in one run; as each breakable example falls, all 4 of its rows go at once
    assert sizes[0] == 32 and sizes[-1] == 16 and len(sizes) == 11
    assert all(a >= b and (a - b) % 4 == 0 for a, b in zip(sizes, sizes[1:]))


def test_fab_t_runs_as_many_targets_side_by_side_as_the_batch_holds(mlp, digits):
    x, y = digits[1][0][:40], digits[1][1][:40]
    with torch.no_grad():
        right = mlp(x).argmax(1) == y
    x, y, steps = x[right][:20], y[right][:20], 4

    def passes(budget):
        model = Counting(mlp)
        with row_budget(budget):  # eps too small to break any: every row runs every step
            fab_targeted(model, x, y, "linf", 1e-4, n_target_classes=9, steps=steps)
        return model.sizes[1:]  # after the clean pass that ranks the targets
    assert passes(20) == [20] * 9 * 2 * steps  # a gradient pass and a check pass per step, target after target
    assert passes(180) == [180] * 2 * steps
    assert passes(100) == [100] * 2 * steps + [80] * 2 * steps  # five targets, then the other four


@pytest.mark.parametrize("budget", [8, 64])
def test_packed_fab_targets_break_exactly_what_one_target_at_a_time_breaks(budget):
    x = torch.full((8, 1, 1, 4), 0.5)
    x[:, 0, 0, 3] = torch.tensor([0.6, 0.3] * 4)
    model = Counting(OneWayOut())
    with row_budget(budget):
        x_adv = fab_targeted(model, x, torch.zeros(8, dtype=torch.long), "linf", 0.1, n_target_classes=4, steps=10)
    assert (x_adv - x).abs().amax() <= 0.1 + 1e-6
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != 0).tolist() == [True, False] * 4
    if budget == 64:  # all four targets in one run: a broken example's four rows leave together
        sizes = model.sizes[1:-1]
        assert sizes[0] == 32 and all((a - b) % 4 == 0 for a, b in zip(sizes, sizes[1:]))


def test_square_does_not_query_a_candidate_equal_to_its_current_point(mlp, digits, monkeypatch):
    x, y = digits[1][0][:32], digits[1][1][:32]
    real = square_module._linf_candidate
    model = Counting(mlp)
    # Candidates that change only every other live example: the rest cannot lower the margin.
    def half_moved(xa, x_best, alive, eps, p, draws):
        top, left, new = real(xa, x_best, alive, eps, p, draws)
        new[1::2] = x_best[alive[1::2], :, top:top + new.shape[2], left:left + new.shape[3]]
        return top, left, new
    monkeypatch.setattr(square_module, "_linf_candidate", half_moved)
    square(model, x, y, "linf", 0.1, n_queries=30, generator=torch.Generator().manual_seed(0))
    search = model.sizes[2:-1]  # after the clean check and the start; before the final check
    assert len(search) == 30 and all(0 < s <= 16 for s in search)
    model.sizes.clear()
    monkeypatch.setattr(square_module, "_linf_candidate",
                        lambda xa, x_best, alive, eps, p, draws: (0, 0, x_best[alive, :, :2, :2]))
    square(model, x, y, "linf", 0.1, n_queries=30, generator=torch.Generator().manual_seed(0))
    assert len(model.sizes) == 3  # the clean check, the start, the final check: no candidate was queried


@pytest.mark.parametrize("kernel, padding", [(5, 2), (3, 1), (3, 0), (4, 3)])
def test_one_channel_conv_input_gradient_equals_autograd(kernel, padding):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 6, kernel, padding=padding)
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    x = torch.rand(5, 1, 9, 9)
    model(x)
    model.requires_grad_(False)

    def input_grad():
        xg = x.clone().requires_grad_(True)
        return torch.autograd.grad(model(xg).square().sum(), xg)[0]

    expected = input_grad()
    with fast_input_grad(model):
        assert "forward" in conv.__dict__
        fast = input_grad()
    assert "forward" not in conv.__dict__  # the module's own forward again
    assert torch.allclose(fast, expected, rtol=1e-5, atol=1e-6) and fast.abs().max() > 0


def test_fast_route_is_taken_only_where_it_is_exact():
    three = torch.nn.Conv2d(3, 4, 3)
    strided = torch.nn.Conv2d(1, 4, 3, stride=2)
    one = torch.nn.Conv2d(1, 4, 3, padding=1)
    model = torch.nn.Sequential(one, torch.nn.Conv2d(4, 3, 1), three, strided)
    with fast_input_grad(model):
        assert "forward" in one.__dict__
        assert not any("forward" in m.__dict__ for m in (three, strided, model[1]))
        x = torch.rand(2, 1, 6, 6)
        # Parameters that take gradients (training) go the usual way: the weight gradient is needed there.
        one.requires_grad_(True)
        one(x).sum().backward()
        assert one.weight.grad is not None


def test_attack_mode_uses_the_fast_route_and_restores_the_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 36, 4))
    routes = []
    model[0].register_forward_hook(lambda module, inputs, out: routes.append(type(out.grad_fn).__name__))
    x = torch.rand(3, 1, 6, 6, requires_grad=True)
    expected = torch.autograd.grad(model(x).sum(), x)[0]
    with attack_mode(model):
        xg = x.detach().requires_grad_(True)
        got = torch.autograd.grad(model(xg).sum(), xg)[0]
    assert routes == ["ConvolutionBackward0", "_OneChannelConvBackward"]
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert "forward" not in model[0].__dict__ and all(p.requires_grad and p.grad is None for p in model.parameters())


def relu_shapes() -> OpShapes:
    """Records the shape of every ReLU the forward and backward passes run (forward: relu; backward: its mask)."""
    return OpShapes(torch.ops.aten.relu, torch.ops.aten.threshold_backward)


def _output_and_input_grad(model, x, upstream):
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    return out.detach(), torch.autograd.grad(out, xg, upstream)[0]


def test_a_relu_before_max_pooling_runs_after_it_with_the_same_values_and_gradients():
    # Ties and signs by construction: windows all negative, all zero, a positive maximum tied, a maximum at 0.
    x = torch.tensor([[-3., -1., 0., 0., 2., 2., 0., -1.],
                      [-2., -5., 0., 0., 1., 2., -4., -2.]]).view(1, 1, 2, 8).repeat(2, 3, 1, 1)
    x = torch.cat((x, torch.randn(2, 3, 2, 8)))  # and random windows
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    with torch.no_grad():  # the conv passes x through unchanged, so the ties reach the ReLU and the pooling
        model[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        model[0].bias.zero_()
    model.requires_grad_(False)
    upstream = torch.randn(4, 3, 1, 4)
    expected = _output_and_input_grad(model, x, upstream)
    assert expected[1].abs().sum() > 0
    with attack_mode(model), relu_shapes() as shapes:
        assert "forward" in model[1].__dict__ and "forward" in model[2].__dict__
        reordered = _output_and_input_grad(model, x, upstream)
    assert torch.equal(reordered[0], expected[0]) and torch.equal(reordered[1], expected[1])  # exactly
    relus, masks = shapes.seen[torch.ops.aten.relu], shapes.seen[torch.ops.aten.threshold_backward]
    assert relus == [(4, 3, 1, 4)] and masks == [(4, 3, 1, 4)]  # on the pooled quarter
    assert "forward" not in model[1].__dict__ and "forward" not in model[2].__dict__  # their own forwards again


def test_pooling_first_only_where_the_order_cannot_be_seen():
    relu, pool, shared = torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.ReLU()
    inner = torch.nn.Sequential(shared, torch.nn.MaxPool2d(2))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), relu, pool, inner, shared, torch.nn.MaxPool2d(2))
    assert pairs(model) == [(relu, pool)]  # `shared` is used twice: its output may be read where no pool follows
    seen = []
    relu.register_forward_hook(lambda module, inputs, out: seen.append(float(out.min())))
    with attack_mode(model), relu_shapes() as shapes:
        model[:3](torch.randn(2, 1, 12, 12))
    assert seen == [0.0]  # a hooked ReLU runs where it stands, and its hook sees its usual (non-negative) output
    assert shapes.seen[torch.ops.aten.relu] == [(2, 2, 10, 10)]
