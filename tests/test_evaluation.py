"""The cascade, the per-example worst case, saved flags, and each sanity check on a model built to trip it."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from advbench.attacks.spec import Attack
from advbench.evaluation import Evaluator
from advbench.tasks.classification import Classification
from advbench.tasks.base import worst_case
from helpers import flags_of
from advbench.evaluation import save_flags
from advbench.evaluation.sanity import sanity_checks

N = 10


class TwoPixelClassifier(nn.Module):
    """Class = argmax of the first two pixels; pixel 2 carries the example's id."""

    def forward(self, x):
        return x.flatten(1)[:, :2]


class BreakIds:
    """A fake attack that flips the prediction of the examples whose id is in ``ids``; it records its calls."""

    def __init__(self, ids):
        self.ids, self.seen = set(ids), []

    def __call__(self, model, x, y):
        ids = (x.flatten(1)[:, 2] * N).round().long().tolist()
        self.seen += ids
        out = x.clone()
        for row, i in enumerate(ids):
            if i in self.ids:
                out[row, 0, 0, :2] = out[row, 0, 0, :2].flip(0)
        return out


def toy_data():
    x = torch.zeros(N, 1, 1, 3)
    y = torch.tensor([0, 1] * (N // 2))
    x[torch.arange(N), 0, 0, y] = 0.9
    x[:, 0, 0, 2] = torch.arange(N) / N
    x[9, 0, 0, :2] = x[9, 0, 0, :2].flip(0)  # example 9 is misclassified clean
    return x, y


@pytest.mark.parametrize("cascade", [True, False])
def test_an_example_any_attack_breaks_counts_as_broken(cascade):
    x, y = toy_data()
    first, second = BreakIds({0, 1, 2}), BreakIds({2, 3, 4})
    flags = flags_of(TwoPixelClassifier(), x, y, {"a": first, "b": second}, batch_size=4,
                         cascade=cascade)
    assert flags["clean"].tolist() == [True] * 9 + [False]
    assert worst_case(flags).tolist() == [False] * 5 + [True] * 4 + [False]
    assert sorted(first.seen) == list(range(9))  # never the misclassified example
    # The cascade attacks only survivors: the second attack never sees 0, 1, 2.
    assert sorted(second.seen) == (list(range(3, 9)) if cascade else list(range(9)))
    results = Classification(0).summarize(flags)
    assert results["robust_acc"] == 0.4 and results["clean_acc"] == 0.9
    assert results["robust_acc_by_attack"] == ({"a": 0.6, "b": 0.4} if cascade else {"a": 0.6, "b": 0.6})


def test_each_attack_packs_the_examples_left_into_full_batches():
    x, y = toy_data()
    first, second = BreakIds({0, 2, 4, 6}), BreakIds(set())
    sizes = []
    counting = lambda model, xb, yb: sizes.append(len(xb)) or second(model, xb, yb)  # noqa: E731
    flags = flags_of(TwoPixelClassifier(), x, y, {"a": first, "b": counting}, batch_size=4)
    # 9 correct, 5 left after the first attack: batches of 4 and 1 (batch by batch they would be 2, 2 and 1).
    assert sizes == [4, 1] and sorted(second.seen) == [1, 3, 5, 7, 8]
    assert flags["b"].tolist() == [False, True, False, True, False, True, False, True, True, False]
    sizes.clear()  # an attack with no example left is not called
    flags_of(TwoPixelClassifier(), x, y, {"a": BreakIds(set(range(N))), "b": counting}, batch_size=4)
    assert sizes == []


def test_attacks_may_fill_the_evaluation_batch():
    from advbench.attacks.rows import rows_that_fit
    x, y = toy_data()
    seen = []
    probe = lambda model, xb, yb: seen.append((len(xb), rows_that_fit(len(xb)))) or xb  # noqa: E731
    flags_of(TwoPixelClassifier(), x, y, {"a": BreakIds({0, 2, 4, 6}), "b": probe}, batch_size=4)
    assert seen == [(4, 4), (1, 4)]  # the last example alone may still run 4 rows side by side
    assert rows_that_fit(3) == 3  # outside an evaluation: the batch given


def test_kept_examples_are_the_ones_that_broke_them():
    x, y = toy_data()
    flags, kept = flags_of(TwoPixelClassifier(), x, y, {"a": BreakIds({0}), "b": BreakIds({1})}, batch_size=4,
                           keep=6)
    assert len(kept) == 6
    assert kept[0, 0, 0, :2].tolist() == pytest.approx([0.0, 0.9])  # broken by a
    assert kept[1, 0, 0, :2].tolist() == pytest.approx([0.9, 0.0])  # broken by b
    assert torch.equal(kept[2:], x[2:6])


def test_flags_file_holds_every_attack_and_the_worst_case(tmp_path):
    x, y = toy_data()
    flags = flags_of(TwoPixelClassifier(), x, y, {"a": BreakIds({0}), "b": BreakIds({5})})
    save_flags(tmp_path / "robust_flags.npz", flags)
    saved = np.load(tmp_path / "robust_flags.npz")
    assert set(saved.files) == {"clean", "a", "b", "worst_case"}
    np.testing.assert_array_equal(saved["worst_case"], worst_case(flags).numpy())


class AlwaysDropout(nn.Module):
    def forward(self, x):
        return nn.functional.dropout(x, 0.5, training=True)


class Round(nn.Module):
    def forward(self, x):
        return torch.round(x)


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def sanity_settings(**sanity):
    return OmegaConf.create({"sample": 200, "zero_grad_frac": 0.1, "max_pgd_gap": 0.05, **sanity})


PGD = Attack("pgd", "linf", 0.1, 0.0125, steps=20, random_start=True)
APGD_T = Attack("apgd", "linf", 0.1, 0.2, steps=20, random_start=True, targeted=True, loss="dlr", n_targets=3)


def check(model, digits, attacks):
    x, y = digits.test
    torch.manual_seed(0)
    flags = flags_of(model, x[:200], y[:200], attacks)
    return sanity_checks(model, x[:200], y[:200], attacks, flags, sanity_settings(),
                         Evaluator(Classification(0), "cpu"))


def test_sanity_checks_stay_silent_on_a_normal_model(trained_mlp, digits):
    found = check(trained_mlp, digits, {"pgd": PGD, "apgd_t": APGD_T})
    assert found["warnings"] == []
    assert not found["random_forward"] and not found["outputs_probabilities"] and found["zero_grad_frac"] == 0
    assert found["pgd20_gap"] <= 0.05


@pytest.mark.parametrize("wrap, key, words", [
    (lambda m: nn.Sequential(m, AlwaysDropout()), "random_forward", "forward pass is random"),
    (lambda m: nn.Sequential(m, nn.Softmax(dim=1)), "outputs_probabilities", "outputs probabilities"),
    (lambda m: nn.Sequential(Round(), m), "zero_grad_frac", "exactly zero"),
    (lambda m: nn.Sequential(m, Scale(1e4)), "pgd20_gap", "PGD-20 leaves"),
])
def test_each_sanity_check_fires_on_a_model_built_to_trip_it(trained_mlp, digits, wrap, key, words):
    found = check(wrap(trained_mlp).eval(), digits, {"pgd": PGD, "apgd_t": APGD_T})
    assert found[key]
    assert any(words in w for w in found["warnings"]), found["warnings"]


class RoundInLowPrecision(nn.Module):
    """Rounds what reaches it in bf16 or fp16: its input gradient is zero under autocast only."""

    def forward(self, x):
        return x if x.dtype == torch.float32 else torch.round(x)


@pytest.mark.parametrize("amp, zero", [("off", 0.0), ("bf16", 1.0)])
def test_the_zero_gradient_check_sees_the_gradients_the_attacks_see_under_autocast(trained_mlp, digits, amp, zero):
    model, (x, y) = nn.Sequential(trained_mlp, RoundInLowPrecision()).eval(), digits.test
    flags = flags_of(model, x[:50], y[:50], {"pgd": PGD})
    found = sanity_checks(model, x[:50], y[:50], {"pgd": PGD}, flags, sanity_settings(),
                          Evaluator(Classification(0), "cpu", amp=amp))
    assert found["zero_grad_frac"] == zero


def test_the_order_of_the_attacks_is_no_symptom(trained_mlp, digits):
    weak = Attack("fgsm", "linf", 0.01, 0.01)  # a weak attack listed last is no sign of masking (tests/test_sanity.py)
    assert check(trained_mlp, digits, {"weak": weak, "pgd": PGD})["warnings"] == []
    found = check(trained_mlp, digits, {"pgd": PGD, "weak": weak})
    assert found["robust_acc_alone"]["weak"] > found["robust_acc_alone"]["pgd"]
    assert found["warnings"] == []
