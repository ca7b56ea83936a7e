"""Attack invariants on random tensors and on a small trained model."""
import pytest
import torch
import torch.nn as nn

from advbench.attacks.spec import Attack
from advbench.attacks import attack_mode, fgm, fgsm, pgd
from advbench.tasks.classification import Classification
from helpers import input_grad, predict
from advbench.attacks.threats import L2Threat, LinfThreat

ATTACKS = {
    "fgsm": Attack("fgsm", "linf", 0.1, 0.1),
    "fgsm_rs": Attack("fgsm", "linf", 0.1, 0.125, random_start=True),
    "pgd_linf": Attack("pgd", "linf", 0.1, 0.025, steps=5, random_start=True, restarts=2),
    "pgd_l2": Attack("pgd", "l2", 0.5, 0.15, steps=5, random_start=True),
    "pgd_targeted": Attack("pgd", "linf", 0.1, 0.025, steps=5, targeted=True),
    "fgm": Attack("fgm", "l2", 0.5, 0.5),
    "apgd_ce": Attack("apgd", "linf", 0.1, 0.2, steps=10, random_start=True, restarts=2),
    "apgd_dlr_l2": Attack("apgd", "l2", 0.5, 1.0, steps=10, random_start=True, loss="dlr"),
    "apgd_t": Attack("apgd", "linf", 0.1, 0.2, steps=10, random_start=True, targeted=True, loss="dlr",
                     n_targets=3),
}


def bn_model():
    """A small random conv net with batch norm and dropout, whose outputs depend on train/eval mode."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def data(n=32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def linf(d):
    return d.flatten(1).abs().max(1).values


def l2(d):
    return d.flatten(1).norm(dim=1)


@pytest.mark.parametrize("name", ATTACKS)
def test_output_in_the_ball_and_in_unit_box(name):
    attack, (x, y) = ATTACKS[name], data()
    x_adv = attack(bn_model(), x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    norm = linf if attack.norm == "linf" else l2
    assert norm(x_adv - x).max() <= attack.eps + 1e-5
    assert norm(x_adv - x).max() > 0.5 * attack.eps  # it did move


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("train_mode", [True, False])
def test_mode_restored_and_no_parameter_grads(name, train_mode):
    model = bn_model()
    model.train(train_mode)
    model[1].train(not train_mode)  # a mixed-mode model must come back exactly as it was
    before = [m.training for m in model.modules()]
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append((m.training, torch.is_grad_enabled())))
    ATTACKS[name](model, *data())
    assert [m.training for m in model.modules()] == before
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert seen and all(training is False for training, _ in seen)  # eval mode while attacking


def test_bn_mode_train_attacks_in_train_mode():
    model, seen = bn_model().eval(), []
    model.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    Attack("pgd", "linf", 0.1, 0.03, steps=2, bn_mode="train")(model, *data())
    assert seen and all(seen) and not model.training


def test_bn_mode_train_targeted_pgd_probes_in_eval_mode_and_square_refuses_it():
    # Targeted PGD counts the classes with a one-example forward: batch norm in train mode refuses a batch of one,
    # so that probe runs in eval mode; the attack's own forwards stay in train mode.
    import advbench
    from advbench.errors import AdvbenchError
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 32),
                          nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x, y = data()
    before, seen = [b.clone() for b in model.buffers()], []
    model.register_forward_pre_hook(lambda m, inp: seen.append((m.training, len(inp[0]))))
    Attack("pgd", "linf", 0.1, 0.03, steps=2, targeted=True, bn_mode="train")(model, x, y)
    assert all(training for training, n in seen if n > 1) and any(training for training, _ in seen)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers())) and not model.training
    # Square's queries take changing sets of rows, whose outputs in train mode depend on each other: refused.
    with pytest.raises(AdvbenchError, match="attack.bn_mode=train does not apply to square"):
        advbench.attack("square", eps=0.1, steps=20, bn_mode="train")


def test_a_model_built_under_inference_mode_is_attacked_as_its_twin_and_left_as_it_was():
    # YOLOv5's val.run loads its model under inference mode: every parameter is an inference tensor.
    attack, (x, y) = Attack("pgd", "linf", 0.1, 0.025, steps=5), data()
    twin = bn_model().eval()
    with torch.inference_mode():
        model = bn_model().eval()
        params = list(model.parameters())
        assert all(p.is_inference() and p.requires_grad for p in params)
        x_adv = attack(model, x, y)
    assert torch.equal(x_adv, attack(twin, x, y)) and not torch.equal(x_adv, x)
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert all(p.is_inference() and p.requires_grad and p.grad is None for p in model.parameters())


def test_an_attack_refuses_inputs_outside_the_unit_box_rather_than_clamp_them():
    # Normalized inputs would be clamped into [0,1] by the projection: x_adv 2 away from x at eps 0.1.
    from advbench.errors import AdvbenchError
    model, (x, y) = bn_model().eval(), data()
    attack = Attack("pgd", "linf", 0.1, 0.025, steps=2)
    with pytest.raises(AdvbenchError, match=r"attack pgd: inputs range over \[-1, 0.99\d*\]; advbench attacks \[0,1\]"):
        attack(model, x * 2 - 1, y)
    assert linf(attack(model, x, y) - x).max() <= 0.1 + 1e-6  # checked once, then no more synchronizations
    assert "_in_box" not in attack.settings()


def test_existing_parameter_grads_are_left_untouched():
    model, (x, y) = bn_model(), data()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    ATTACKS["pgd_linf"](model, x, y)
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


@pytest.mark.parametrize("name", ATTACKS)
def test_works_inside_no_grad(name):
    model, (x, y) = bn_model().eval(), data()
    torch.manual_seed(3)
    expected = ATTACKS[name](model, x, y)
    torch.manual_seed(3)
    with torch.no_grad():
        x_adv = ATTACKS[name](model, x, y)
    assert torch.equal(x_adv, expected)


def test_grad_mode_restored_after_attack():
    with torch.no_grad():
        ATTACKS["fgsm"](bn_model(), *data())
        assert not torch.is_grad_enabled()


def test_fgsm_equals_one_pgd_step_without_random_start():
    model, (x, y) = bn_model().eval(), data()
    one_step = pgd(model, x, y, LinfThreat(0.1, 0.1), steps=1, task=Classification(0), random_start=False)
    assert torch.equal(fgsm(model, x, y, 0.1), one_step)
    grad = input_grad(model, x, y)
    assert torch.equal(one_step, (x + 0.1 * grad.sign()).clamp(0, 1))


def test_fgm_is_a_normalized_l2_step():
    model, (x, y) = bn_model().eval(), data()
    x = 0.25 + 0.5 * x  # away from the box edges, so no clipping
    x_adv = fgm(model, x, y, 0.3)
    assert torch.allclose(l2(x_adv - x), torch.full((len(x),), 0.3), atol=1e-5)
    grad = input_grad(model, x, y)
    cos = nn.functional.cosine_similarity((x_adv - x).flatten(1), grad.flatten(1))
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)


def test_l2_threat_projection_and_init():
    threat, x = L2Threat(0.5, 0.1), torch.full((16, 3, 8, 8), 0.5)
    far = x + torch.randn_like(x)
    assert torch.allclose(l2(threat.project(far, x) - x), torch.full((16,), 0.5), atol=1e-5)
    assert (l2(threat.init(x) - x) <= 0.5 + 1e-6).all()


def test_input_gradient_is_independent_of_batch_size():
    model, (x, y) = bn_model().eval(), data()
    assert torch.allclose(input_grad(model, x, y)[:4], input_grad(model, x[:4], y[:4]), atol=1e-6)


def accuracy(model, x, y):
    return (predict(model, x) == y).float().mean().item()


class Valley(nn.Module):
    """Margin m(t) = 1 - 4t + 2t^2 along t = sum(x - 0.5): its minimum (-1) lies at t = 1, while one FGSM step of
    eps = 3/16 lands at t = 3 (m = 7). Gradient ascent in small steps finds the valley; one big step jumps it."""

    def forward(self, x):
        t = (x - 0.5).flatten(1).sum(1)
        m = 1 - 4 * t + 2 * t**2
        return torch.stack([m, torch.zeros_like(m)], 1)  # class 0 while m > 0


def test_pgd_finds_what_one_fgsm_step_jumps_over():
    model, x, y = Valley(), torch.full((4, 1, 4, 4), 0.5), torch.zeros(4, dtype=torch.long)
    eps = 3 / 16
    assert (predict(model, fgsm(model, x, y, eps)) == y).all()
    x_adv = Attack("pgd", "linf", eps, eps / 10, steps=10, random_start=False)(model, x, y)
    assert (predict(model, x_adv) != y).all()


def test_pgd_is_no_weaker_than_fgsm_on_a_trained_model(trained_mlp, digits):
    x, y = digits.test
    clean = accuracy(trained_mlp, x, y)
    torch.manual_seed(0)
    fgsm_acc = accuracy(trained_mlp, fgsm(trained_mlp, x, y, 0.1), y)
    pgd_acc = accuracy(trained_mlp, Attack("pgd", "linf", 0.1, 0.0125, steps=20, random_start=True)(
        trained_mlp, x, y), y)
    # measured 0.97 / 0.44 / 0.41: the margins leave room for any CPU's rounding and the random start
    assert clean > 0.9 and fgsm_acc < clean - 0.2 and pgd_acc <= fgsm_acc + 0.02


def test_restarts_keep_the_per_example_worst_case(trained_mlp, digits):
    x, y = digits.test
    broken = []
    for restarts in (1, 4):
        torch.manual_seed(5)  # the first restart draws the same start in both runs: the same first attempt
        # One short step from the random start: whether it breaks an example hangs on the start, so restarts
        # matter (3 steps of 0.02 at eps 0.05 broke 1-3 more of 450, too few to hold on every trained weights).
        x_adv = Attack("pgd", "linf", 0.1, 0.02, steps=1, random_start=True, restarts=restarts)(trained_mlp, x, y)
        broken.append(predict(trained_mlp, x_adv) != y)
    # Every example the first attempt broke stays broken (kept, never overwritten by a later restart) ...
    assert (broken[0] & ~broken[1]).sum() == 0
    # ... and the later restarts, run only on the survivors, break some more (measured 11-12 more, 33 -> 44,
    # over trajectories perturbed after every training step).
    assert broken[1].sum() > broken[0].sum()


class OneDirection(nn.Module):
    """logit_1 - logit_0 = w . x: the gradient's direction is ``w`` wherever x is, so restarts cannot differ
    in what they find, while each random start lands somewhere else."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        z = x.flatten(1) @ self.w
        return torch.stack([torch.zeros_like(z), z], 1)


def test_restarts_attack_only_the_examples_still_correct():
    torch.manual_seed(0)
    w, eps = torch.randn(16), 0.05
    x = 0.2 + 0.6 * torch.rand(200, 1, 4, 4)  # away from the [0,1] box: a step of eps is never clipped
    z = x.flatten(1) @ w
    z_adv = z + eps * w.abs().sum()  # an Linf step of eps along sign(w): the attack's exact effect on the margin
    keep = (z.abs() > 1e-2) & (z_adv.abs() > 1e-2)  # nothing near a decision boundary: no rounding can flip it
    x, z_adv = x[keep], z_adv[keep]
    n, survivors = len(x), int((z_adv < 0).sum())
    model, calls = OneDirection(w), []
    model.register_forward_pre_hook(lambda m, inp: calls.append(len(inp[0])))
    Attack("pgd", "linf", eps, eps, steps=1, random_start=False, restarts=3)(model, x, torch.zeros(n).long())
    # restart 1 attacks every example, then checks them; restarts 2 and 3 attack only what still stands
    assert 0 < survivors < n and calls == [n, n, survivors, survivors, survivors]


class Confident(nn.Module):
    """A linear classifier with huge logits: the softmax saturates, so the loss gradient in fp16 underflows
    unless it is scaled."""

    def __init__(self, bias: float = 12.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.linear = nn.Linear(16, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(3, 16, generator=g).sign() * 2.0)
            self.linear.bias.copy_(torch.tensor([bias, 0.0, 0.0]))

    def forward(self, x):
        return self.linear(x.flatten(1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_input_gradients_keep_their_signs_and_do_not_underflow(dtype):
    model, x = Confident().eval(), torch.full((8, 1, 4, 4), 0.5)
    y = torch.zeros(8, dtype=torch.long)  # confidently right: p_y near 1, the gradient near 1e-6
    reference = input_grad(model, x, y)
    with torch.autocast("cpu", dtype=dtype):
        low = input_grad(model, x, y)
    assert low.dtype == torch.float32
    # Component j is sum_k (p_k - onehot_k) W[k, j] with weights of +-2: 4 p_1, 4 p_2 or 4 (p_1 + p_2) where the
    # classes' weights differ, far from zero, so the signs must match exactly; exactly 0 where all three are
    # equal, and there both sides hold only rounding (fp32's p_0 - 1 against -(p_1 + p_2)).
    weight = model.linear.weight
    differ = (weight != weight[0]).any(0).view(1, 1, 4, 4).expand_as(x)
    assert differ.any() and (reference[differ] != 0).all() and (low[differ] != 0).all()
    assert torch.equal(low[differ].sign(), reference[differ].sign())
    scale = reference.flatten(1).abs().amax(1).view(-1, 1, 1, 1).expand_as(x)
    assert (low[~differ].abs() < 1e-3 * scale[~differ]).all()


def test_fp16_input_gradients_of_very_confident_examples_beside_wrong_ones_do_not_underflow():
    # p of the wrong classes near 1e-13 for the first four (right) examples: their output gradient is below fp16's
    # range even scaled by 2**12, and beside the last four (wrong, gradients near 1) no one scale for the batch
    # keeps both; each example's own scale does.
    model, x = Confident(bias=30.0).eval(), torch.full((8, 1, 4, 4), 0.5)
    y = torch.tensor([0] * 4 + [2] * 4)
    reference = input_grad(model, x, y)
    with torch.autocast("cpu", dtype=torch.float16):
        low = input_grad(model, x, y)
    assert reference[:4].abs().max() < 1e-10 and (reference[:4] != 0).all()
    assert (low[:4] != 0).all() and torch.equal(low[:4].sign(), reference[:4].sign())
    error = (low - reference).flatten(1).abs().amax(1) / reference.flatten(1).abs().amax(1)
    assert (error < 0.02).all()  # each example's gradient to fp16's precision, at its own scale


def test_attack_mode_context_restores_requires_grad_flags():
    model = bn_model()
    model[0].weight.requires_grad_(False)
    with attack_mode(model):
        assert not any(p.requires_grad for p in model.parameters())
        assert torch.is_grad_enabled()
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * 5


def frozen_ema_copy():
    """An EMA copy as detectors keep one: eval mode, every parameter with requires_grad=False."""
    model = bn_model().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("name", ["fgsm", "pgd_linf", "pgd_l2", "apgd_ce", "apgd_t", "fgm"])
@pytest.mark.parametrize("context", ["inference_mode", "no_grad", "plain"])
@pytest.mark.parametrize("kind", ["ema", "train"])
def test_attacks_work_inside_any_validation_loop(name, context, kind):
    model = frozen_ema_copy() if kind == "ema" else bn_model().train()
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    buffers = [b.clone() for b in model.buffers()]
    x, y = data()
    guard = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad,
             "plain": torch.enable_grad}[context]
    with guard():
        xi, yi = x.clone(), y.clone()  # the loop's own tensors: inference tensors under inference_mode
        x_adv = ATTACKS[name](model, xi, yi)
        logits = model(x_adv)  # the caller can use the result right there
    assert logits.shape == (len(x), 10) and not x_adv.requires_grad
    assert (x_adv - x).abs().max() > 0 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    if kind == "ema":  # an eval-mode forward updates nothing: the buffers are bit-identical
        assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))


def test_bn_mode_train_puts_the_running_statistics_back():
    model = bn_model().eval()
    before = [b.clone() for b in model.buffers()]
    Attack("pgd", "linf", 0.1, 0.03, steps=3, bn_mode="train")(model, *data())
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_evaluate_works_inside_inference_mode(digits, trained_mlp):
    import advbench
    x, y = digits.test
    model = trained_mlp
    for p in model.parameters():
        p.requires_grad_(False)
    attacks = {"pgd": advbench.attack("pgd", eps=0.1, steps=5)}
    torch.manual_seed(0)
    expected = advbench.evaluate(model, [(x[:100], y[:100])], attacks)
    torch.manual_seed(0)
    with torch.inference_mode():
        got = advbench.evaluate(model, [(x[:100], y[:100])], attacks)
    for p in model.parameters():
        p.requires_grad_(True)
    assert got == expected and got["robust_acc"] < got["clean_acc"]
