"""The Python API: advbench.attack and advbench.evaluate inside a user's own loop."""
import pytest
import torch

import advbench
from advbench.errors import AdvbenchError
from advbench.evaluation import Evaluator
from advbench.tasks import Classification


def loader(digits, batch=100):
    x, y = digits.test
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)]


def test_attack_by_name_and_from_a_config():
    pgd = advbench.attack("pgd", eps="8/255", steps=7)
    assert (pgd.name, pgd.steps, pgd.random_start) == ("pgd", 7, True)
    assert pgd.eps == pytest.approx(8 / 255) and pgd.alpha == pytest.approx(2.5 * 8 / 255 / 7)
    assert advbench.attack("fgm", eps=0.5).norm == "l2"
    assert advbench.attack({"name": "pgd", "norm": "l2", "steps": 3}, eps=1.0).norm == "l2"
    assert advbench.attack("apgd", eps=0.1, loss="dlr").loss == "dlr"
    with pytest.raises(AdvbenchError, match="attack='nope' is unknown: expected one of"):
        advbench.attack("nope")
    with pytest.raises(AdvbenchError, match="attack:"):
        advbench.attack("pgd", stepz=3)
    with pytest.raises(AdvbenchError, match="eps="):
        advbench.attack("pgd", eps="8/0")


def test_evaluate_in_a_training_loop_leaves_the_model_as_it_was(trained_mlp, digits):
    model = trained_mlp
    model.train()
    model[1].eval()  # a sub-module in its own mode
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)  # gradients a training loop has accumulated
    modes = [m.training for m in model.modules()]
    attacks = {"fgsm": advbench.attack("fgsm", eps=0.1), "pgd": advbench.attack("pgd", eps=0.1, steps=10)}
    torch.manual_seed(0)
    with torch.no_grad():
        results = advbench.evaluate(model, loader(digits), attacks)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) and p.requires_grad for p in model.parameters())
    assert results["n_examples"] == len(digits.test[1])
    assert results["robust_acc"] <= results["robust_acc_by_attack"]["fgsm"] < results["clean_acc"]
    torch.manual_seed(0)
    same = Evaluator(Classification(0), "cpu", batch_size=100).evaluate(model, *digits.test, attacks)
    assert same == results
    for p in model.parameters():
        p.grad = None
    model.eval()
