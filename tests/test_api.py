"""The Python API: advbench.attack and advbench.evaluate inside a user's own loop."""
import pytest
import torch

import advbench
from advbench.api import preset
from advbench.errors import AdvbenchError
from advbench.evaluation import Evaluator
from advbench.tasks.classification import Classification


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
        results = advbench.evaluate(model, loader(digits), attacks, sanity=False)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) and p.requires_grad for p in model.parameters())
    assert results["n_examples"] == len(digits.test[1])
    assert results["robust_acc"] <= results["robust_acc_by_attack"]["fgsm"] < results["clean_acc"]
    torch.manual_seed(0)
    same = Evaluator(Classification(0), "cpu", batch_size=100).evaluate(model, *digits.test, attacks)
    assert same == {k: v for k, v in results.items() if k != "flags"}
    assert results["flags"]["worst_case"].count(True) == round(results["robust_acc"] * results["n_examples"])
    for p in model.parameters():
        p.grad = None
    model.eval()


class Normalized(torch.nn.Module):
    """A model that expects normalized inputs, as most users' models do."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, x):
        return self.model(x * self.std + self.mean)  # undoes the normalization the caller applied


def test_evaluate_takes_presets_normalization_dict_batches_and_checks_the_range(trained_mlp, digits):
    x, y = digits.test[0][:60], digits.test[1][:60]
    torch.manual_seed(0)
    plain = advbench.evaluate(trained_mlp, [(x, y)], "autoattack_fast", eps=0.05)
    assert list(plain["robust_acc_by_attack"]) == ["apgd_ce", "apgd_t"] and plain["n_examples"] == 60
    assert "warnings" in plain["sanity"] and len(plain["flags"]["clean"]) == 60
    wrapped = Normalized(trained_mlp, 0.3, 0.2)
    torch.manual_seed(0)
    again = advbench.evaluate(wrapped, [{"image": x, "label": y, "index": torch.arange(60)}], "autoattack_fast",
                              eps=0.05, normalization=(0.3, 0.2))
    assert again["robust_acc_by_attack"] == plain["robust_acc_by_attack"]
    with pytest.raises(AdvbenchError, match=r"inputs range over \[-1.*normalization=\(mean, std\)"):
        advbench.evaluate(trained_mlp, [(x * 2 - 1, y)], "pgd20", eps=0.05)
    with pytest.raises(AdvbenchError, match="attacks='nope' is unknown"):
        advbench.evaluate(trained_mlp, [(x, y)], "nope")
    with pytest.raises(AdvbenchError, match="a batch dict needs an image key"):
        advbench.evaluate(trained_mlp, [{"pixels": x, "label": y}], "pgd20")


def test_evaluate_takes_class_indices_below_the_number_of_outputs(trained_mlp, digits):
    x, y = digits.test[0][:20], digits.test[1][:20]
    for labels, words in ((y.float(), "labels are torch.float32 shaped \\(20,\\); class indices expected"),
                          (y[:, None], "labels are torch.int64 shaped \\(20, 1\\)"),
                          (y + 10, "labels range over \\[10, 19\\], but the model has 10 outputs")):
        with pytest.raises(AdvbenchError, match=words):
            advbench.evaluate(trained_mlp, [(x, labels)], "pgd20", eps=0.05, sanity=False)


def test_evaluate_attacks_a_large_loader_batch_in_small_blocks_on_the_cpu():
    # small_cnn's first layer outputs 50 KB per 28x28 image: auto picks blocks of 64 on the CPU
    # (evaluation/batch.py); the loader's batch of 150 is attacked 64, 64 and 22 rows at a time.
    from advbench.models.image import small_cnn
    from aa_fixtures import Counting
    model = Counting(small_cnn((1, 28, 28), 10, (0.5,), (0.5,)))
    x, y = torch.rand(150, 1, 28, 28), torch.randint(0, 10, (150,))
    with torch.no_grad():
        y = model.model(x).argmax(1)  # every example clean-correct, so every one is attacked
    model.sizes.clear()
    torch.manual_seed(0)
    result = advbench.evaluate(model, [(x, y)], {"fgsm": advbench.attack("fgsm", eps=0.0)}, sanity=False)
    assert result["n_examples"] == 150 and result["clean_acc"] == 1.0
    # the labels' probe of the class count (one input); the block size's probe (two); the clean pass; per block,
    # FGSM's gradient pass and the pass that judges it
    assert model.sizes == [1, 2, 64, 64, 22, 64, 64, 64, 64, 22, 22]


def test_a_text_evaluation_names_the_presets_that_fit_it():
    # pgd has 5 restarts, and an attack on the embeddings takes one: refused, naming the presets that do fit.
    with pytest.raises(AdvbenchError, match=r"attacks='pgd' on text classification: .*one restart \(presets pgd20 and quick fit\)"):
        preset("pgd", 1.0, "text")
    assert set(preset("pgd20", 1.0, "text")) == {"pgd20"} and set(preset("quick", 1.0, "text")) == {"fgsm", "pgd10"}
