"""Training modes' losses, schedules and the AMP-aware epoch, on fixed tensors and tiny data."""
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from advbench.attack_spec import Attack
from advbench.data import TensorLoader
from advbench.models import mlp
from advbench.training import MODES, lr_multiplier, make_scheduler, train_epoch


def tiny():
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 4, 4), torch.arange(8) % 3
    return mlp((1, 4, 4), 3, [0.5], [0.3], hidden=8), x, y


def cfg_for(mode, **extra):
    return OmegaConf.create({"training": {"name": mode, "adv_weight": 0.25}, "amp": "off", "grad_clip": None,
                             "progress": False, **extra})


def test_losses_match_a_direct_computation():
    model, x, y = tiny()
    x_adv = (x + 0.1).clamp(0, 1)
    ce_clean, ce_adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert torch.allclose(MODES["standard"](model, x, x_adv, y, cfg_for("standard"))[0], ce_clean)
    assert torch.allclose(MODES["adversarial"](model, x, x_adv, y, cfg_for("adversarial"))[0], ce_adv)
    mixed = MODES["mixed"](model, x, x_adv, y, cfg_for("mixed"))[0]
    assert torch.allclose(mixed, 0.75 * ce_clean + 0.25 * ce_adv, atol=1e-6)


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [1, 1, 1, 1]),
    ("piecewise", [1, 0.1, 0.01, 0.01]),
    ("onecycle", [0.5, 0.6666667, 0.3333333, 0]),
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


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_train_epoch_updates_the_model_under_every_amp_setting(mode, amp):
    model, x, y = tiny()
    x, y = x.repeat(4, 1, 1, 1), y.repeat(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = make_scheduler(optimizer, "constant", 2)
    scaler = torch.amp.GradScaler("cpu", enabled=amp == "fp16")
    before = [p.clone() for p in model.parameters()]
    attack = Attack("fgsm", "linf", 0.1, 0.1)
    stats = train_epoch(model, TensorLoader(x, y, 16), optimizer, scheduler, scaler, attack,
                        cfg_for(mode, amp=amp), torch.device("cpu"))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert stats["train_loss"] > 0 and 0 <= stats["train_clean_acc"] <= 1
    assert (stats["train_adv_acc"] is None) == (mode == "standard")
    assert model.training


def test_grad_clip_bounds_the_update():
    model, x, y = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = cfg_for("standard", grad_clip=1e-3)
    train_epoch(model, TensorLoader(x, y, 8), optimizer, make_scheduler(optimizer, "constant", 1),
                torch.amp.GradScaler("cpu", enabled=False), None, cfg, torch.device("cpu"))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() <= 1e-3 + 1e-6
