"""Training modes, model selection and paper experiments through the real CLI, on tiny data."""
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from advbench.attacks import make_attack
from advbench.evaluation import Evaluator
from advbench.tasks.classification import Classification
from advbench.training.guard import OverfittingGuard
from conftest import compose_config
from helpers import TINY, advbench, cli

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parent.parent / "advbench" / "conf" / "experiment").glob("*.yaml"))
MODES = ["standard", "adversarial", "mixed", "fast", "free", "trades", "mart"]
ATTACK_FOR = {"fast": "fgsm_rs", "free": "fgsm"}


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_trains_and_writes_its_metrics(tmp_path, mode):
    attack = ATTACK_FOR.get(mode, "pgd")
    advbench(*TINY, f"training={mode}", f"attack={attack}", "attack.steps=2", "epochs=2",
             f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    run = tmp_path / "run"
    rows = lines(run / "metrics.jsonl")
    assert len(rows) == (1 if mode == "free" else 2)  # free: 2 epochs of budget / 4 replays = 1 pass
    assert all(r["train_loss"] > 0 and 0 <= r["val_robust_acc"] <= r["val_clean_acc"] for r in rows)
    results = json.loads((run / "results.json").read_text())
    assert results["training"]["epochs_run"] == len(rows)
    assert results["training"]["best"]["epoch"] == results["training"]["best_epoch"]
    assert (results["training"]["guard"] is not None) == (mode == "fast")
    assert mode != "fast" or results["training"]["guard"]["fired"] is False
    assert {"model.pt", "best.pt", "last.pt"} <= {p.name for p in run.iterdir()}


def test_free_counts_epochs_in_gradient_computations(tmp_path):
    advbench(*TINY, "training=free", "attack=fgsm", "epochs=5", "training.replays=2",
             f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    rows = lines(tmp_path / "run" / "metrics.jsonl")
    assert [r["grad_computations_per_example"] for r in rows] == [2, 4, 6]  # ceil(5 / 2) = 3 passes


@pytest.mark.parametrize("overrides, per_epoch", [
    (["training=standard"], 1),  # the update
    (["training=adversarial", "attack=fgsm_rs"], 2),  # Fast-AT: one attack step, the update
    (["training=adversarial", "attack=pgd", "attack.steps=3"], 4),
    (["training=trades", "attack=pgd", "attack.steps=2"], 3),
])
def test_gradient_computations_count_the_attacks_steps_too(tmp_path, overrides, per_epoch):
    code, err = cli(*TINY, *overrides, "val.n_examples=10", "eval.n_examples=10", f"hydra.run.dir={tmp_path}/run",
                    cwd=tmp_path)
    assert code == 0, err
    rows = lines(tmp_path / "run" / "metrics.jsonl")
    assert [r["grad_computations_per_example"] for r in rows] == [per_epoch, 2 * per_epoch]


@pytest.mark.parametrize("mode, attack, extra, expected", [
    ("fast", "pgd", [], "training=fast accepts attack=fgsm, fgsm_rs; attack=pgd given"),
    ("free", "fgm", [], "training=free accepts attack=fgsm, fgsm_rs; attack=fgm given"),
    ("trades", "fgm", [], "training=trades accepts attack=pgd, fgsm, fgsm_rs; attack=fgm given"),
    ("trades", "pgd", ["attack.restarts=2"], "attack.restarts=1"),
    ("adversarial", "none", [], "training=adversarial accepts"),
])
def test_modes_refuse_attacks_they_do_not_support(tmp_path, mode, attack, extra, expected):
    proc = advbench(*TINY, f"training={mode}", f"attack={attack}", *extra, f"hydra.run.dir={tmp_path}/run",
                    cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert expected in proc.stderr


SMOKE_DATA = {  # the experiments' data sets need a download: a synthetic stand-in of the same shape
    "mnist": ["dataset=synthetic", "dataset.channels=1", "dataset.image_size=28"],
    "cifar10": ["dataset=synthetic", "dataset.channels=3", "dataset.image_size=32", "dataset.mean=[0.5,0.5,0.5]",
                "dataset.std=[0.25,0.25,0.25]"],
    "fashion_mnist_det": ["dataset.n_scenes=112", "dataset.n_test=16"],  # fewer scenes of the same kind
    "fashion_mnist_seg": ["dataset.n_scenes=112", "dataset.n_test=16"],
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_a_smoke_variant(tmp_path, experiment):
    text = (Path(__file__).parent.parent / "advbench" / "conf" / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_") and "Reported" in text or "no paper number" in text
    data = next((v for k, v in SMOKE_DATA.items() if f"/dataset: {k}" in text), [])
    width = ["model.width=8"] if "preact_resnet18" in text else []
    if "/model: hf" in text:  # the experiment's tiny BERT, built offline where its config says
        pytest.importorskip("transformers")
        from advbench.tasks.text.data import synthetic_text
        from advbench.tasks.text.tiny_bert import build_tiny_bert
        from omegaconf import OmegaConf
        texts = synthetic_text(OmegaConf.create({"n_classes": 6, "n_train": 60, "n_test": 1}))[0][0]
        build_tiny_bert(tmp_path / "data" / "tiny_bert_fortunes", texts, 6, vocab_size=200, hidden=32)
    attacks = compose_config([f"+experiment={experiment}"]).eval.attacks
    fewer_steps = [f"eval.attacks.{name}.{k}={v}" for name in attacks for k, v in (("steps", 2), ("restarts", 1))]
    cli(f"+experiment={experiment}", *data, *width, "epochs=1", "batch_size=32", "dataset.n_train=96",
        "dataset.val_size=16", "val.n_examples=16", "eval.n_examples=16", "attack.steps=2", *fewer_steps,
        "training.guard.n_examples=16", "progress=false", "amp=off", "eval.eps_list=null",
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    clean, robust = results["metric_names"]["clean"], results["metric_names"]["robust"]
    assert results["n_examples"] == 16 and 0 <= results[robust] <= results[clean] + 1e-9


class Constant(torch.nn.Module):
    """Logits [s, 0] whatever the input: class 0 for s > 0. No attack can move them, so PGD accuracy on a batch
    of class-0 examples is exactly 1 (s > 0) or 0 (s < 0): a collapse can be forced by setting s."""

    def __init__(self, s: float):
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor(s))

    def forward(self, x):
        return torch.stack([self.s.expand(len(x)), torch.zeros(len(x))], 1)


def guard_for(tmp_path, action="rollback"):
    settings = OmegaConf.create({"n_examples": 8, "steps": 3, "max_drop": 0.2, "action": action})
    train = (torch.rand(8, 1, 4, 4), torch.zeros(8, dtype=torch.long))
    attack = make_attack("fgsm", eps=0.1, random_start=True)
    return OverfittingGuard(settings, train, attack, Evaluator(Classification(2), "cpu"), tmp_path / "last.pt")


def epoch_end(guard, model, optimizer, epoch, path):
    """What fit does after an epoch: the guard's check, then last.pt unless the guard fired."""
    fired = guard.check(model, optimizer, epoch)
    if not fired:
        torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    return fired


@pytest.mark.parametrize("action", ["rollback", "stop"])
def test_guard_fires_on_a_forced_collapse_and_rolls_back_to_the_last_good_epoch(tmp_path, action):
    model = Constant(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = guard_for(tmp_path, action)
    assert not epoch_end(guard, model, optimizer, 1, tmp_path / "last.pt")
    with torch.no_grad():
        model.s.fill_(2.0)
    assert not epoch_end(guard, model, optimizer, 2, tmp_path / "last.pt")
    with torch.no_grad():
        model.s.fill_(-1.0)  # the collapse: every example now misclassified, attacked or not
    assert epoch_end(guard, model, optimizer, 3, tmp_path / "last.pt")
    report = guard.report()
    assert report["fired"] and report["epoch"] == 3 and report["pgd_acc"] == [1.0, 1.0, 0.0]
    if action == "rollback":
        assert report["rolled_back_to"] == 2 and model.s.item() == 2.0  # epoch 2's weights are back
    else:
        assert report["rolled_back_to"] is None and model.s.item() == -1.0


def test_guard_stays_silent_when_nothing_can_collapse(tmp_path):
    model = Constant(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = guard_for(tmp_path)
    for epoch in range(1, 6):
        assert not epoch_end(guard, model, optimizer, epoch, tmp_path / "last.pt")
    assert guard.report() == {"fired": False, "epoch": None, "action": "rollback", "pgd_acc": [1.0] * 5,
                              "rolled_back_to": None}


def test_guard_fires_inside_a_cli_run_on_a_scripted_collapse(tmp_path, monkeypatch):
    # The guard's PGD accuracy, scripted: 0.6, 0.7, then a collapse to 0.1 at epoch 3 of 5.
    scripted = iter([0.6, 0.7, 0.1, 0.7, 0.7])
    monkeypatch.setattr(OverfittingGuard, "measure", lambda self, model: next(scripted))
    cli(*TINY, "training=fast", "attack=fgsm_rs", "epochs=5", "training.guard.n_examples=16",
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    guard = results["training"]["guard"]
    assert guard == {"fired": True, "epoch": 3, "action": "rollback", "pgd_acc": [0.6, 0.7, 0.1],
                     "rolled_back_to": 2}
    assert results["training"]["epochs_run"] == 3
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    final = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert all(torch.equal(final["state_dict"][k], v) for k, v in last["state_dict"].items())
    # the weights and optimizer are epoch 2's: Adam has taken 2 epochs of 6 steps (350 examples, batch 64)
    assert last["optimizer"]["state"][0]["step"] == 2 * 6
    assert "catastrophic overfitting" in (tmp_path / "run" / "advbench.log").read_text()


def test_guard_stays_silent_inside_a_cli_run_without_collapse(tmp_path):
    cli(*TINY, "training=fast", "attack=fgsm_rs", "epochs=3", "training.guard.n_examples=16",
        "training.guard.max_drop=1.0", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # max_drop=1 cannot be exceeded by an accuracy in [0, 1]: silence is certain, not likely
    assert results["training"]["guard"]["fired"] is False and results["training"]["epochs_run"] == 3
    assert len(results["training"]["guard"]["pgd_acc"]) == 3
