"""Training modes' losses, schedules and the AMP-aware epoch, on fixed tensors and tiny data."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from advbench.attacks.spec import Attack
from advbench.data.loaders import TensorLoader
from advbench.models import mlp
from advbench.training.losses import mart_loss, trades_loss
from advbench.training.schedules import eps_factor, lr_multiplier, make_scheduler
from advbench.tasks.classification import Classification
from advbench.training import MODES, Batch, Plan, build_mode, train_epoch

TASK = Classification(3)


def tiny():
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 4, 4), torch.arange(8) % 3
    return mlp((1, 4, 4), 3, [0.5], [0.3], hidden=8), x, y


def mode_for(name, **settings):
    return build_mode(OmegaConf.create({"name": name, "adv_weight": 0.25, "beta": 6.0, "replays": 3} | settings),
                      TASK)


def epoch(name, model, loader, optimizer, scheduler, attack, amp="off", grad_clip=None, **settings):
    scaler = torch.amp.GradScaler("cpu", enabled=amp == "fp16")
    return train_epoch(model, loader, mode_for(name, **settings), TASK, attack, optimizer, scheduler, scaler,
                       Plan(amp=amp, grad_clip=grad_clip), torch.device("cpu"), clean_sample=(loader.x, loader.targets))


def step_loss(name, model, x, y, x_adv):
    """The loss a mode's step computes with an "attack" returning the fixed ``x_adv`` (no update made)."""
    losses = []
    batch = Batch(model, model, TASK, x, y, attack=lambda x, y, objective=None: x_adv, eps=0.1,
                  autocast=contextlib.nullcontext, update=lambda loss, after=None: losses.append(loss),
                  backward=lambda loss: None)
    mode_for(name).step(batch)
    return losses[0]


def test_losses_match_a_direct_computation():
    model, x, y = tiny()
    x_adv = (x + 0.1).clamp(0, 1)
    ce_clean, ce_adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert torch.allclose(step_loss("standard", model, x, y, x_adv), ce_clean)
    assert torch.allclose(step_loss("adversarial", model, x, y, x_adv), ce_adv)
    assert torch.allclose(step_loss("mixed", model, x, y, x_adv), 0.75 * ce_clean + 0.25 * ce_adv, atol=1e-6)
    logits, logits_adv = model(x), model(x_adv)
    assert torch.allclose(step_loss("trades", model, x, y, x_adv), trades_loss(logits, logits_adv, y, 6.0))
    assert torch.allclose(step_loss("mart", model, x, y, x_adv), mart_loss(logits, logits_adv, y, 6.0))


def test_trades_and_mart_losses_match_the_papers_code_on_fixed_tensors():
    g = torch.Generator().manual_seed(0)
    logits, logits_adv = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    # TRADES (Zhang et al.'s trades.py): CE + beta * (1/bs) * KLDivLoss(sum)(log_softmax(adv), softmax(clean))
    kl = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(logits_adv, 1), F.softmax(logits, 1)) / 6
    assert torch.allclose(trades_loss(logits, logits_adv, y, 6.0), F.cross_entropy(logits, y) + 6.0 * kl)
    # MART (Wang et al.'s mart.py)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / 6) * torch.sum(torch.sum(torch.nn.KLDivLoss(reduction="none")(
        torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    assert torch.allclose(mart_loss(logits, logits_adv, y, 6.0), loss_adv + 6.0 * loss_robust)


def one_step(mode, beta):
    model, x, y = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    epoch(mode, model, TensorLoader(x, y, 8), optimizer, make_scheduler(optimizer, "constant", 1),
          Attack("pgd", "linf", 0.1, 0.05, 3, True), beta=beta)
    return [p.detach() for p in model.parameters()]


def test_trades_with_beta_zero_is_clean_training():
    torch.manual_seed(0)
    trades = one_step("trades", 0.0)
    standard = one_step("standard", 0.0)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(trades, standard))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(one_step("trades", 6.0), standard))


def test_free_replays_each_batch_m_times():
    model, x, y = tiny()
    x, y = x.repeat(3, 1, 1, 1), y.repeat(3)  # 24 examples, 3 batches of 8
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    optimizer.register_step_post_hook(lambda *args: steps.append(1))
    stats = epoch("free", model, TensorLoader(x, y, 8), optimizer, make_scheduler(optimizer, "constant", 9),
                  Attack("fgsm", "linf", 0.1, 0.1))
    assert len(steps) == 3 * 3  # batches x replays: one forward-backward pass each
    assert stats["train_adv_acc"] is not None


def test_eps_warmup_ramps_linearly():
    assert [eps_factor(2, p) for p in (0, 0.5, 1, 2, 3)] == [0, 0.25, 0.5, 1, 1]
    assert eps_factor(0, 0) == 1
    assert Attack("pgd", "linf", 0.2, 0.05, 5).scaled(0.5) == Attack("pgd", "linf", 0.1, 0.025, 5)


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [1, 1, 1, 1]),
    ("piecewise", [1, 0.1, 0.01, 0.01]),
    ("onecycle", [0.5, 0.6666667, 0.3333333, 0]),
    ("cosine", [0.9045085, 0.3454915, 0.0954915, 0]),
])
def test_schedules(schedule, expected):
    got = [lr_multiplier(schedule, p) for p in (0.2, 0.6, 0.8, 1.0)]
    assert got == pytest.approx(expected)


def test_scheduler_steps_per_iteration():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = make_scheduler(optimizer, "piecewise", total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1, 1, 0.1, 0.01])


@pytest.mark.parametrize("mode", [m for m in MODES if m in TASK.modes])
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_train_epoch_updates_the_model_under_every_amp_setting(mode, amp):
    model, x, y = tiny()
    x, y = x.repeat(4, 1, 1, 1), y.repeat(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = make_scheduler(optimizer, "constant", 2)
    before = [p.clone() for p in model.parameters()]
    attack = Attack("fgsm", "linf", 0.1, 0.1)
    stats = epoch(mode, model, TensorLoader(x, y, 16), optimizer, scheduler, attack, amp=amp)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert stats["train_loss"] > 0 and 0 <= stats["train_clean_acc"] <= 1
    assert (stats["train_adv_acc"] is None) == (mode == "standard")
    assert model.training


def test_adversarial_only_modes_pay_no_extra_clean_forward_for_their_training_accuracy():
    model, x, y = tiny()
    x, y = x.repeat(4, 1, 1, 1), y.repeat(4)  # 32 examples, 2 batches of 16
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = epoch("fast", model, TensorLoader(x, y, 16), optimizer, make_scheduler(optimizer, "constant", 2),
                  Attack("fgsm", "linf", 0.1, 0.1, random_start=True))
    # per batch: the attack's forward and the update's; then one forward over the fixed sample of 32
    assert calls == [16, 16, 16, 16, 32]
    model.eval()
    with torch.no_grad():
        assert stats["train_clean_acc"] == pytest.approx((model(x).argmax(1) == y).float().mean().item())


def test_grad_clip_bounds_the_update():
    model, x, y = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    epoch("standard", model, TensorLoader(x, y, 8), optimizer, make_scheduler(optimizer, "constant", 1), None,
          grad_clip=1e-3)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() <= 1e-3 + 1e-6
