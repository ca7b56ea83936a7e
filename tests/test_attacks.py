"""Attack invariants on random tensors and on a small trained model."""
import pytest
import torch
import torch.nn as nn

from advbench.attack_spec import Attack
from advbench.attacks import attack_mode, fgm, fgsm, input_grad, pgd
from advbench.evaluate import predict
from advbench.threats import L2Threat, LinfThreat

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
    one_step = pgd(model, x, y, LinfThreat(0.1, 0.1), steps=1, random_start=False)
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


def test_pgd_lowers_accuracy_more_than_fgsm(trained_mlp, digits):
    x, y = digits.test
    clean = accuracy(trained_mlp, x, y)
    torch.manual_seed(0)
    fgsm_acc = accuracy(trained_mlp, fgsm(trained_mlp, x, y, 0.1), y)
    pgd_acc = accuracy(trained_mlp, Attack("pgd", "linf", 0.1, 0.025, steps=20, random_start=True)(
        trained_mlp, x, y), y)
    assert clean > 0.9
    assert pgd_acc < fgsm_acc < clean


def test_restarts_keep_the_per_example_worst_case(trained_mlp, digits):
    x, y = digits.test
    accs = []
    for restarts in (1, 4):
        torch.manual_seed(5)  # the first restart draws the same start in both runs
        accs.append(accuracy(trained_mlp, Attack("pgd", "linf", 0.05, 0.02, steps=3, random_start=True,
                                                 restarts=restarts)(trained_mlp, x, y), y))
    assert accs[1] < accs[0]


def test_targeted_pgd_reaches_its_targets(trained_mlp, digits):
    x, y = digits.test[0][:200], digits.test[1][:200]
    torch.manual_seed(0)
    n_classes = 10
    targets = (y + torch.randint(1, n_classes, y.shape)) % n_classes
    torch.manual_seed(0)
    x_adv = Attack("pgd", "linf", 0.2, 0.02, steps=30, targeted=True)(trained_mlp, x, y)
    hit = (predict(trained_mlp, x_adv) == targets).float().mean().item()
    assert hit > 0.5  # random wrong predictions would hit 1/9 of targets


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_input_gradient_signs_agree_with_fp32(trained_mlp, digits, dtype):
    x, y = digits.test
    reference = input_grad(trained_mlp, x, y).sign()
    with torch.autocast("cpu", dtype=dtype):
        low = input_grad(trained_mlp, x, y)
    assert low.dtype == torch.float32
    nonzero = reference != 0
    agree = (low.sign() == reference)[nonzero].float().mean().item()
    assert agree > 0.9
    assert (low[nonzero] != 0).float().mean().item() > 0.95  # not lost to underflow


def test_attack_mode_context_restores_requires_grad_flags():
    model = bn_model()
    model[0].weight.requires_grad_(False)
    with attack_mode(model):
        assert not any(p.requires_grad for p in model.parameters())
        assert torch.is_grad_enabled()
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * 5
