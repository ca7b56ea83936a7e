"""The sanity checks: silent on the standard evaluations of a sound model, each one firing on a model (or an
attack) built so that its symptom is there by construction."""
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

import advbench
from advbench.api import preset
from advbench.attacks.spec import make_attack
from advbench.config import SanityConf
from advbench.evaluation import Evaluator
from advbench.evaluation.sanity import COMPARED, MARGIN, compare_alone, sanity_checks
from advbench.tasks.classification import Classification
from helpers import predict

EPS = 0.1
N = 200


def autoattack_small(eps=EPS):
    """eval=autoattack's four attacks, in its order, with fewer steps, targets and queries (seconds on a CPU)."""
    aa = preset("autoattack", eps)
    return {"apgd_ce": replace(aa["apgd_ce"], steps=20), "apgd_t": replace(aa["apgd_t"], steps=20, n_targets=3),
            "fab_t": replace(aa["fab_t"], steps=10, n_targets=3), "square": replace(aa["square"], steps=300)}


def readme_example(fgsm_last=True):
    """eval=pgd20 with ``'eval.attacks.pgd20.restarts=2' '+eval.attacks.fgsm={name: fgsm}'`` (getting-started)."""
    pgd20 = {"pgd20": replace(preset("pgd20", EPS)["pgd20"], restarts=2)}
    fgsm = {"fgsm": advbench.attack("fgsm", eps=EPS)}
    return pgd20 | fgsm if fgsm_last else fgsm | pgd20


def evaluate(model, digits, attacks):
    """advbench.evaluate with its sanity checks on the first N test examples, from a fixed seed."""
    x, y = digits.test
    torch.manual_seed(0)
    return advbench.evaluate(model, [(x[:N], y[:N])], attacks, sanity=True)


def checks(model, digits, attacks):
    """sanity_checks as the final evaluation calls it (flags from the cascade, the settings' defaults)."""
    x, y = digits.test[0][:N], digits.test[1][:N]
    evaluator = Evaluator(Classification(0), "cpu")
    torch.manual_seed(0)
    flags = evaluator.flags(model, x, y, attacks)
    return sanity_checks(model, x, y, attacks, flags, OmegaConf.structured(SanityConf), evaluator)


def quiet(found):
    """No warning, every check run, each comparison with room to spare."""
    assert found["warnings"] == []
    assert not found["random_forward"] and not found["outputs_probabilities"] and found["zero_grad_frac"] == 0
    for key in ("one_step_gap", "gradient_free_gap", "pgd20_gap"):
        assert found[key] is None or found[key] < MARGIN - 0.02, (key, found[key])


def test_no_warning_on_autoattack_whose_square_alone_is_weaker(trained_mlp, digits):
    results = evaluate(trained_mlp, digits, autoattack_small())
    quiet(results["sanity"])
    # Square, listed last, finds nothing left after APGD and alone breaks fewer: both expected, neither a symptom
    alone = results["sanity"]["robust_acc_alone"]
    assert alone["square"] > min(alone.values()) + MARGIN
    by_attack = results["robust_acc_by_attack"]  # cumulative: Square finds next to nothing APGD and FAB left
    assert by_attack["fab_t"] - 0.02 <= by_attack["square"] <= by_attack["fab_t"]
    assert results["sanity"]["gradient_free_gap"] < 0 and results["sanity"]["pgd20_gap"] is not None


@pytest.mark.parametrize("attacks", [lambda: preset("pgd20", EPS), readme_example,
                                     lambda: readme_example(fgsm_last=False)],
                         ids=["pgd20", "readme_fgsm_last", "readme_fgsm_first"])
def test_no_warning_on_pgd20_and_the_readme_example(trained_mlp, digits, attacks):
    quiet(evaluate(trained_mlp, digits, attacks())["sanity"])


class Quantize(nn.Module):
    """Input rounded to 8 levels: the input gradient is exactly zero everywhere (round's derivative is 0)."""

    def forward(self, x):
        return torch.round(x * 8) / 8


class Noise(nn.Module):
    """A randomized defense: Gaussian noise on the input in every forward pass, eval mode included."""

    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


def test_a_quantizer_in_front_trips_the_zero_gradient_check(trained_mlp, digits):
    found = checks(nn.Sequential(Quantize(), trained_mlp).eval(), digits, preset("pgd20", EPS))
    assert found["zero_grad_frac"] == 1.0
    assert any("input gradient of the attack loss is exactly zero for 100% of 200 examples" in w
               for w in found["warnings"]), found["warnings"]


def test_a_gradient_free_attack_beating_blind_gradients_is_flagged(trained_mlp, digits):
    model = nn.Sequential(Quantize(), trained_mlp).eval()
    # no random start and a zero gradient: PGD returns its input unchanged, so alone it scores exactly clean
    blind_pgd = make_attack("pgd", "linf", EPS, steps=10, random_start=False)
    found = checks(model, digits, {"pgd": blind_pgd, "square": autoattack_small()["square"]})
    alone = found["robust_acc_alone"]
    clean = (predict(model, digits.test[0][:N]) == digits.test[1][:N]).float().mean().item()
    assert alone["pgd"] == pytest.approx(clean) and found["above_clean"] == pytest.approx(0)
    assert alone["square"] < clean - 2 * MARGIN  # Square searches through the rounding (tests/test_square.py)
    assert found["gradient_free_gap"] == pytest.approx(clean - alone["square"])
    assert any("gradient-free square leaves robust_acc" in w and "points below the best gradient attack pgd" in w
               for w in found["warnings"]), found["warnings"]


def test_a_softmax_output_trips_the_probability_check(trained_mlp, digits):
    found = checks(nn.Sequential(trained_mlp, nn.Softmax(dim=1)).eval(), digits, readme_example())
    assert found["outputs_probabilities"]
    assert any("outputs probabilities" in w and "remove the final softmax" in w for w in found["warnings"])


def test_a_randomized_defense_trips_the_random_forward_check(trained_mlp, digits):
    model = nn.Sequential(Noise(), trained_mlp).eval()
    found = checks(model, digits, preset("pgd20", EPS))
    assert found["random_forward"]
    assert any("forward pass is random" in w and "EOT" in w for w in found["warnings"])


def test_an_iterative_attack_weaker_than_one_step_is_flagged(trained_mlp, digits):
    stuck = make_attack("pgd", "linf", EPS, steps=10, random_start=False, alpha=0.0)  # never moves: scores clean
    fgsm = advbench.attack("fgsm", eps=EPS)
    found = checks(trained_mlp, digits, {"fgsm": fgsm, "pgd": stuck})
    alone = found["robust_acc_alone"]
    assert found["above_clean"] == pytest.approx(0) and alone["fgsm"] < alone["pgd"] - 2 * MARGIN
    assert found["one_step_gap"] == pytest.approx(alone["pgd"] - alone["fgsm"])
    assert any("one-step fgsm leaves robust_acc" in w and "below iterative pgd" in w for w in found["warnings"])


def pgd(**settings):
    return replace(make_attack("pgd", "linf", EPS, steps=10, random_start=True), **settings)


FGSM = make_attack("fgsm", "linf", EPS)
SQUARE = make_attack("square", "linf", EPS, steps=100)


@pytest.mark.parametrize("attacks, alone, key", [
    ({"a": FGSM, "b": pgd()}, {"a": 0.3, "b": 0.5}, "one_step_gap"),
    ({"a": pgd(), "b": SQUARE}, {"a": 0.5, "b": 0.3}, "gradient_free_gap"),
    ({"a": pgd(), "b": FGSM}, {"a": 1.0, "b": 1.0}, "above_clean"),  # a bug a set metric (mAP) could show
])
def test_each_comparison_fires_on_its_symptom_and_only_there(attacks, alone, key):
    found, warnings = compare_alone(alone, 0.8, attacks, 100, "robust_acc")
    assert found[key] == pytest.approx(0.2) and len(warnings) == 1
    assert all(found[k] is None or found[k] <= MARGIN for k in COMPARED if k != key)
    assert warnings[0].startswith("each attack alone on the same 100 examples: ")
    quiet, none = compare_alone({name: 0.6 for name in alone}, 0.8, attacks, 100, "robust_acc")
    assert none == [] and quiet[key] is not None  # the same check, no symptom: silent


@pytest.mark.parametrize("other", [
    pgd(eps=EPS / 2),  # another budget
    pgd(norm="l2"),  # another threat model
    pgd(targeted=True),  # towards one random class: weaker than untargeted by design
    pgd(goal="empty", descend=True),  # TOG-style: another objective
    lambda model, x, y: x,  # a user's own callable
])
def test_only_attacks_of_one_threat_and_objective_are_compared(other):
    found, warnings = compare_alone({"fgsm": 0.2, "other": 0.7}, 0.8, {"fgsm": FGSM, "other": other}, 100,
                                    "robust_acc")
    assert found["one_step_gap"] is None and warnings == []
