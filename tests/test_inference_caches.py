"""Attacks on models whose caches were filled under torch.inference_mode() (YOLOv5's Detect grids), text attacks
inside inference_mode and no_grad, and advbench.evaluate on token ids."""
from collections import namedtuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import advbench
from advbench.attacks import gradients
from advbench.attacks.gradients import normal_caches
from advbench.attacks.spec import make_attack
from advbench.errors import AdvbenchError
from advbench.models import TextCNN, TransformerClassifier
from advbench.tasks.text import TextClassification


class GridHead(nn.Module):
    """Caches its grid the way YOLOv5's Detect does: rebuilt only when the input shape changes, held in a list
    attribute, a dict attribute and a registered buffer; each one multiplies the features, so autograd saves it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(16, 3)
        self.grid = [torch.empty(0)]
        self.tables = {"scale": torch.empty(0)}
        self.register_buffer("anchor_grid", torch.empty(0), persistent=False)

    def forward(self, x):
        h = self.conv(x - 0.5)
        if self.grid[0].shape != h.shape[-2:]:
            ny, nx = h.shape[-2:]
            yv, xv = torch.meshgrid(torch.arange(ny, dtype=h.dtype), torch.arange(nx, dtype=h.dtype), indexing="ij")
            self.grid[0] = (xv + yv) / (nx + ny)
            self.anchor_grid = 1 + self.grid[0].flip(0)
            self.tables["scale"] = 2 - self.grid[0]
        h = h * self.grid[0] + h * self.anchor_grid + h * self.tables["scale"]
        return self.fc(10 * F.adaptive_avg_pool2d(h, 2).flatten(1))  # logits that inputs can move


def head_and_data(size=8):
    torch.manual_seed(0)
    model = GridHead().eval()
    x = torch.rand(6, 3, size, size)
    with torch.no_grad():
        y = model(x).argmax(1)  # correct by construction: the attack has something to break
    model.grid[0] = torch.empty(0)  # the cache starts empty, as a fresh Detect's does
    return model, x, y


def cache_of(model):
    return model.grid, model.grid[0], model.tables, model.tables["scale"], model.anchor_grid


def pointers(model):
    return [(p, p.data_ptr()) for p in model.parameters()]


ATTACKS = {"pgd": lambda: advbench.attack("pgd", eps=0.3, steps=10),
           "apgd": lambda: make_attack("apgd", "linf", 0.3, steps=10),
           "fab": lambda: make_attack("fab", "linf", 0.3, steps=10, n_targets=2),
           "square": lambda: make_attack("square", "linf", 0.3, steps=200)}


def losses(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_attack_after_an_inference_mode_pass_uses_copies_and_puts_the_cache_back(name):
    model, x, y = head_and_data()
    with torch.inference_mode():
        model(x)  # the val loop's clean pass: the cache now holds inference tensors
    assert model.grid[0].is_inference() and model.anchor_grid.is_inference()
    cache, params = cache_of(model), pointers(model)
    torch.manual_seed(1)
    x_adv = ATTACKS[name]()(model, x, y)
    assert all(a is b for a, b in zip(cache_of(model), cache))  # the very originals, inference tensors still
    assert model.grid[0].is_inference() and "anchor_grid" in dict(model.named_buffers())
    assert [(p, p.data_ptr()) for p in model.parameters()] == params  # parameters never copied
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).float().mean() >= 0.5  # each attack breaks most (all but Square: all)


def test_the_copies_compute_what_a_normal_cache_computes():
    model, x, y = head_and_data()
    model(x)  # a cache of normal tensors
    torch.manual_seed(1)
    expected = advbench.attack("pgd", eps=0.3, steps=10)(model, x, y)
    model, x, y = head_and_data()
    with torch.inference_mode():
        model(x)
    torch.manual_seed(1)
    assert torch.equal(advbench.attack("pgd", eps=0.3, steps=10)(model, x, y), expected)


def test_attacked_first_then_inference_mode_then_attacked_at_a_new_shape():
    model, x, y = head_and_data()
    attack = advbench.attack("pgd", eps=0.3, steps=10)
    x_adv = attack(model, x, y)  # the cache is built during the attack, of normal tensors, and kept
    assert not model.grid[0].is_inference()
    with torch.inference_mode():
        assert model(x_adv).shape == (6, 3)  # the same shape: the attack's cache serves inference mode
        x2 = torch.rand(6, 3, 12, 12)
        y2 = model(x2).argmax(1)  # a new shape: rebuilt under inference mode
    assert model.grid[0].is_inference()
    cache, params = cache_of(model), pointers(model)
    x2_adv = attack(model, x2.clone(), y2.clone())
    assert all(a is b for a, b in zip(cache_of(model), cache)) and pointers(model) == params
    assert (losses(model, x2_adv, y2.clone()) > losses(model, x2.clone(), y2.clone())).all()


def test_a_whole_validation_loop_inside_inference_mode():
    model, x, y = head_and_data()
    params = pointers(model)
    with torch.inference_mode():
        for size in (8, 8, 10):  # YOLOv5's val.py: clean pass, attack, the adversarial pass, shapes changing
            xb = torch.rand(4, 3, size, size)
            yb = model(xb).argmax(1)
            cache = cache_of(model)
            x_adv = advbench.attack("pgd", eps=0.3, steps=10)(model, xb, yb)
            assert all(a is b for a, b in zip(cache_of(model), cache))
            assert (F.cross_entropy(model(x_adv), yb, reduction="none") >
                    F.cross_entropy(model(xb), yb, reduction="none")).all()
        results = advbench.evaluate(model, [(x, y)], {"pgd": advbench.attack("pgd", eps=0.3, steps=10)})
    assert results["clean_acc"] == 1.0 and results["robust_acc"] < 0.5
    assert pointers(model) == params


def test_a_model_with_nothing_to_fix_makes_no_copy(monkeypatch):
    copies = []
    real = gradients._normal_copy
    monkeypatch.setattr(gradients, "_normal_copy", lambda t: copies.append(t) or real(t))
    model, x, y = head_and_data()
    model(x)  # a normal cache
    advbench.attack("pgd", eps=0.3, steps=3)(model, x, y)
    with torch.inference_mode():  # the caller's inference tensors are the attack's inputs, not the model's
        advbench.attack("pgd", eps=0.3, steps=3)(model, x.clone(), y.clone())
    assert copies == []
    with torch.inference_mode():
        model(torch.rand(2, 3, 9, 9))
    advbench.attack("pgd", eps=0.3, steps=3)(model, x, y)
    assert len(copies) == 3  # the list's grid, the dict's table, the buffer: one copy each per attack


def test_containers_are_rebuilt_not_changed_and_only_inference_parameters_are_copied():
    Pair = namedtuple("Pair", "a b")
    module = nn.Linear(2, 2)
    with torch.inference_mode():
        t = torch.ones(2)
        module.frozen = nn.Parameter(torch.ones(2), requires_grad=False)  # made under inference mode: copied
        module.held = {"pair": Pair(t, 1), "nested": [(t, "x")], "plain": torch.zeros(1).clone()}
    module.plain = torch.ones(1)
    held, frozen, weight = module.held, module.frozen, module.weight
    with normal_caches(module):
        assert module.held is not held and not module.held["pair"].a.is_inference()
        assert type(module.held["pair"]) is Pair and module.held["pair"].b == 1
        assert not module.held["nested"][0][0].is_inference() and module.held["nested"][0][1] == "x"
        assert module.weight is weight  # a normal parameter is the model's own
        assert not module.frozen.is_inference() and torch.equal(module.frozen, frozen)
        assert not module.frozen.requires_grad
        assert held["pair"].a is t  # the original container was not changed in place
    assert module.held is held and module.held["pair"].a is t and module.frozen is frozen


# --- text: the embedding attacks and advbench.evaluate on token ids ---------------------------------------------

def text_model_and_data(model_cls):
    torch.manual_seed(0)
    model = model_cls((12,), 3, vocab_size=30).eval()
    ids = torch.randint(1, 30, (6, 12))
    ids[:, 8:] = 0
    ids[:, 0] = 2  # a special token, pinned
    return model, ids, torch.arange(6) % 3


@pytest.mark.parametrize("model_cls", [TextCNN, TransformerClassifier])
@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad])
def test_text_attacks_work_inside_inference_mode_and_no_grad(model_cls, context, monkeypatch):
    copies = []
    real = gradients._normal_copy
    monkeypatch.setattr(gradients, "_normal_copy", lambda t: copies.append(t) or real(t))
    model, ids, y = text_model_and_data(model_cls)
    attack = advbench.attack("pgd", eps=0.5, steps=5, norm="l2", task=TextClassification(3, special=(2,)))
    torch.manual_seed(1)
    expected = attack(model, ids, y)
    torch.manual_seed(1)
    with context():
        got = attack(model, ids.clone(), y.clone())
        logits = model.classify(got)  # usable right there
    assert torch.equal(got, expected) and logits.shape == (6, 3)
    clean = model.embedding(ids).detach()
    assert torch.equal(got[:, 8:], clean[:, 8:]) and torch.equal(got[:, 0], clean[:, 0])  # pinned
    assert all(p.grad is None for p in model.parameters())
    assert copies == []  # the view's clean embeddings and pinned positions are made as normal tensors


@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad, torch.enable_grad])
def test_evaluate_on_token_ids_with_task_text(context):
    model, ids, y = text_model_and_data(TextCNN)
    loader = [(ids[:4], y[:4]), (ids[4:], y[4:])]
    torch.manual_seed(0)
    expected = advbench.evaluate(model, loader, "quick", eps=1.0, task="text")
    torch.manual_seed(0)
    with context():
        got = advbench.evaluate(model, [(a.clone(), b.clone()) for a, b in loader], "quick", eps=1.0, task="text")
    assert got == expected and got["n_examples"] == 6
    assert got["robust_acc"] < got["clean_acc"] and "warnings" in got["sanity"]  # the sanity checks ran
    attacks = {"fgm": advbench.attack("fgm", eps=1.0, task="text")}  # the attacks' own task: no task= needed
    assert advbench.evaluate(model, loader, attacks, sanity=False)["robust_acc"] <= got["clean_acc"]


def test_evaluate_explains_what_token_ids_and_text_tasks_need():
    model, ids, y = text_model_and_data(TextCNN)
    with pytest.raises(AdvbenchError, match='the inputs are torch.int64, not float images.*task="text"'):
        advbench.evaluate(model, [(ids, y)], "pgd20", eps=0.5)
    with pytest.raises(AdvbenchError, match="attacks='autoattack' on text classification: .*pgd20"):
        advbench.evaluate(model, [(ids, y)], "autoattack", eps=0.5, task="text")
    with pytest.raises(AdvbenchError, match='attack .p. was built for classification.*task="text"'):
        advbench.evaluate(model, [(ids, y)], {"p": advbench.attack("pgd")}, task="text")
    with pytest.raises(AdvbenchError, match='task="text" takes integer token ids'):
        advbench.evaluate(model, [(ids.float(), y)], "pgd20", eps=0.5, task="text")
    with pytest.raises(AdvbenchError, match='task="detection" is not a classifier'):
        advbench.evaluate(model, [(ids, y)], "pgd20", task="detection")
    image = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(AdvbenchError, match=r"torch.uint8, not float images.*x.float\(\) / 255"):
        advbench.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), [(image, y[:2])], "pgd20")
