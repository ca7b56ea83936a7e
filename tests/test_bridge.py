"""advbench in other loops: the training objectives (advbench.losses) give advbench's own numbers, and run inside a
Lightning Trainer and an Accelerate loop; the Lightning callback validates adversarially."""
import copy
import importlib
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import advbench
from advbench.errors import AdvbenchError
from advbench.models.text import TextCNN
from advbench.training import Plan, build_mode, train_epoch

SETTINGS = {"adversarial": {}, "mixed": {"adv_weight": 0.3}, "trades": {"beta": 6.0}, "mart": {"beta": 5.0},
            "smart": {"beta": 2.0}, "freelb": {"init_mag": 0.5}}


def image_model():
    """An MLP with batch norm, so that the attack's eval mode and the training step's batch statistics matter."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))


def image_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def text_model():
    torch.manual_seed(0)
    return TextCNN((12,), 3, vocab_size=30, dim=8, widths=(3,), channels=8)


def text_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (6, 12), generator=g)
    ids[:, 9:] = 0  # padding is never perturbed
    return ids, torch.randint(0, 3, (6,), generator=g)


def own_loop(name, model, batches, attack, optimizer, **settings):
    """advbench's own epoch over ``batches`` with training mode ``name``; its row."""
    mode = build_mode(OmegaConf.create({"name": name, **settings}), attack.task)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return train_epoch(model, batches, mode, attack.task, attack, optimizer, scheduler, scaler, Plan(),
                       torch.device("cpu"))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


CASES = {  # name -> (model, batch, attack)
    "adversarial": (image_model, image_batch, lambda: advbench.attack("pgd", eps=0.1, steps=2)),
    "mixed": (image_model, image_batch, lambda: advbench.attack("fgsm_rs", eps=0.1)),
    "trades": (image_model, image_batch, lambda: advbench.attack("pgd", eps=0.1, steps=2)),
    "mart": (image_model, image_batch, lambda: advbench.attack("pgd", eps=0.1, steps=2)),
    "smart": (text_model, text_batch, lambda: advbench.attack("pgd", eps=1.0, norm="l2", steps=2, task="text")),
    "freelb": (text_model, text_batch,
               lambda: advbench.attack("pgd", eps=1.0, norm="l2", steps=3, alpha=0.4, task="text")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_loss_is_what_advbench_own_step_computes(name):
    make_model, make_batch, make_attack = CASES[name]
    attack, (x, y), settings = make_attack(), make_batch(), SETTINGS[name]
    ours = make_model().train()
    loop = copy.deepcopy(ours)
    params = list(ours.parameters())

    torch.manual_seed(5)
    loss = getattr(advbench.losses, name)(ours, x, y, attack, **settings)
    if name != "freelb":  # the attack leaves no parameter gradient: the loss's backward is the only one
        assert loss.requires_grad and all(p.grad is None for p in params)
        loss.backward()
    assert x.grad is None and all(p.grad is not None for p in params)
    torch.manual_seed(5)
    row = own_loop(name, loop, [(x, y)], attack, torch.optim.SGD(loop.parameters(), lr=0.0), **settings)

    assert loss.item() == row["train_loss"]  # same seed, same batch: the same number, bit for bit
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(params, loop.parameters()))
    assert same_state(ours, loop)  # batch-norm statistics too: the attack ran in eval mode in both


def test_mixed_on_the_embedding_matrix_runs_its_backward_passes_and_restores_the_matrix():
    attack = advbench.attack("fgm", eps=0.5, target="embedding_weights", task="text")
    (x, y), ours = text_batch(), text_model().train()
    loop, weight = copy.deepcopy(ours), ours.embedding.weight.detach().clone()
    torch.manual_seed(5)
    loss = advbench.losses.mixed(ours, x, y, attack)
    assert not loss.requires_grad and torch.equal(ours.embedding.weight, weight)
    torch.manual_seed(5)
    row = own_loop("mixed", loop, [(x, y)], attack, torch.optim.SGD(loop.parameters(), lr=0.0), adv_weight=0.5)
    assert loss.item() == row["train_loss"]
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(ours.parameters(), loop.parameters()))


def test_free_replays_each_batch_as_advbench_does():
    batches = [image_batch(1), image_batch(2)]
    ours = image_model().train()
    loop = copy.deepcopy(ours)
    free, optimizer = advbench.losses.Free(eps=0.1, replays=2), torch.optim.SGD(ours.parameters(), lr=0.1)
    losses = [free.step(ours, x, y, optimizer).item() for x, y in batches]  # the perturbation carried over
    row = own_loop("free", loop, batches, advbench.attack("fgsm", eps=0.1),
                   torch.optim.SGD(loop.parameters(), lr=0.1), replays=2)
    assert sum(v * 8 for v in losses) / 16 == row["train_loss"]
    assert same_state(ours, loop) and not same_state(ours, image_model())  # 4 updates, the same ones
    free.reset()
    assert free.mode.delta is None


def test_defaults_and_refusals():
    assert advbench.losses.default_attack("trades").steps == 10
    assert advbench.losses.default_attack("trades").eps == pytest.approx(8 / 255)
    assert advbench.losses.default_attack("freelb").task.perturbs == "embedding"
    (x, y), model = image_batch(), image_model()
    assert torch.isfinite(advbench.losses.trades(model, x, y))  # the default attack: PGD-10 at 8/255
    with pytest.raises(AdvbenchError, match="attack must be an advbench.attack"):
        advbench.losses.trades(model, x, y, "pgd")
    with pytest.raises(AdvbenchError, match="beta=-1"):
        advbench.losses.trades(model, x, y, beta=-1)
    with pytest.raises(AdvbenchError, match="training=trades accepts attack=pgd"):
        advbench.losses.trades(model, x, y, advbench.attack("apgd"))
    with pytest.raises(AdvbenchError, match="training=trades on text"):
        advbench.losses.trades(text_model(), *text_batch(), advbench.attack("pgd", eps=1.0, task="text"))
    with pytest.raises(AdvbenchError, match="replays=0"):
        advbench.losses.Free(replays=0)


# --- Lightning -----------------------------------------------------------------------------------------------------


def loaders(n=48, batch_size=16):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size), torch.utils.data.DataLoader(data, batch_size)


def lightning_module(attack):
    pl = pytest.importorskip("lightning.pytorch")

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = image_model()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = advbench.losses.trades(self, x, y, attack, beta=6.0)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_acc", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)
    return pl, Classifier()


def trainer(pl, callback, tmp_path):
    return pl.Trainer(max_epochs=1, limit_train_batches=3, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      callbacks=[callback], default_root_dir=tmp_path)


def test_lightning_fit_trains_with_trades_and_validates_adversarially(tmp_path):
    attack = advbench.attack("pgd", eps=0.1, steps=3, random_start=False)  # deterministic: comparable below
    pl, module = lightning_module(attack)
    before = copy.deepcopy(module.net)
    train, val = loaders()
    callback = advbench.lightning.AdversarialValidation(attack, every_n_epochs=1)
    fit = trainer(pl, callback, tmp_path)
    fit.fit(module, train, val)
    found = fit.callback_metrics
    assert torch.isfinite(found["train_loss"]) and not same_state(module.net, before)
    clean, robust = found["val_clean_acc"].item(), found["val_robust_acc"].item()
    assert robust <= clean and clean == pytest.approx(found["val_acc"].item(), abs=1e-6)
    expected = advbench.evaluate(module, val, {"robust": attack}, sanity=False)  # the same attack on the same batches
    assert robust == pytest.approx(expected["robust_acc"], abs=1e-6)
    assert clean == pytest.approx(expected["clean_acc"], abs=1e-6)


def test_lightning_validate_and_every_n_epochs(tmp_path):
    attacks = {"fgsm": advbench.attack("fgsm", eps=0.1), "pgd": advbench.attack("pgd", eps=0.1, steps=2)}
    pl, module = lightning_module(advbench.attack("pgd", eps=0.1, steps=1))
    train, val = loaders()
    callback = advbench.lightning.AdversarialValidation(attacks, every_n_epochs=2, n_examples=20)
    fit = trainer(pl, callback, tmp_path)
    fit.fit(module, train, val)
    assert "val_robust_acc" not in fit.callback_metrics  # epoch 1 of every 2: not attacked
    module.train()
    (found,) = fit.validate(module, val, verbose=False)  # trainer.validate always attacks
    assert module.training  # the module's mode is put back
    assert found["val_robust_acc"] <= found["val_robust_acc_fgsm"] <= found["val_clean_acc"]
    assert found["val_robust_acc"] == pytest.approx(found["val_robust_acc_pgd"])  # the cascade's last is the worst
    assert callback.seen == 20


def test_lightning_callback_refusals(monkeypatch):
    pytest.importorskip("lightning.pytorch")
    with pytest.raises(AdvbenchError, match="every_n_epochs=0"):
        advbench.lightning.AdversarialValidation(advbench.attack("fgsm"), every_n_epochs=0)
    with pytest.raises(AdvbenchError, match="attack must be"):
        advbench.lightning.AdversarialValidation(42)
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "advbench.lightning")
    with pytest.raises(AdvbenchError, match=r"pip install 'advbench\[bridge\]'"):
        importlib.import_module("advbench.lightning")


# --- Accelerate ----------------------------------------------------------------------------------------------------


def test_accelerate_loop_with_the_adversarial_loss():
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    model = image_model()
    before = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train, _ = loaders()
    model, optimizer, train = accelerator.prepare(model, optimizer, train)
    attack = advbench.attack("pgd", eps=0.1, steps=2)
    model.train()
    for x, y in train:
        optimizer.zero_grad()
        loss = advbench.losses.adversarial(model, x, y, attack)
        accelerator.backward(loss)
        optimizer.step()
        assert torch.isfinite(loss)
    assert not same_state(accelerator.unwrap_model(model), before)
