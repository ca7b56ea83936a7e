"""The embedding-matrix recipe's hot path: the moved matrix swapped in and the clean one swapped back (no backup
copy, no copy back), bit for bit the recipe as the NLP competitions write it."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from advbench.models import TextCNN
from advbench.tasks.text import TextClassification
from advbench.training import build_mode
from advbench.attacks.embedding import move_embedding_weights, put_back_embedding_weights
from advbench.training.mode import Batch


def _embedding_with_grad(grad=None):
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(40, 8)
    embedding.weight.grad = torch.randn(40, 8) if grad is None else grad
    return embedding


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0])
def test_fgm_moves_the_matrix_as_the_recipe_writes_it_and_puts_the_same_tensor_back(eps):
    embedding = _embedding_with_grad()
    weight, before = embedding.weight, embedding.weight.detach().clone()
    storage = weight.data.data_ptr()
    clean = move_embedding_weights(embedding, eps)
    recipe = before + eps * weight.grad / weight.grad.norm()  # W.data.add_(eps * g / g.norm()), out of place
    assert torch.equal(weight.detach().view(torch.int32), recipe.view(torch.int32))  # every bit
    assert clean.data_ptr() == storage and torch.equal(clean, before)  # the clean matrix was never written
    put_back_embedding_weights(embedding, clean)
    assert weight.data.data_ptr() == storage and torch.equal(weight, before)


@pytest.mark.parametrize("bad", [0.0, float("inf"), float("nan")])
def test_a_zero_or_non_finite_gradient_moves_no_weight(bad):
    embedding = _embedding_with_grad(torch.full((40, 8), bad))
    before = embedding.weight.detach().clone()
    clean = move_embedding_weights(embedding, 0.5)
    assert torch.equal(embedding.weight, before)
    put_back_embedding_weights(embedding, clean)
    assert torch.equal(embedding.weight, before)


def test_one_overflowed_entry_moves_no_weight():
    grad = torch.randn(40, 8)
    grad[3, 2] = float("inf")  # an fp16 overflow in one entry: the norm is inf, the scaler skips the step
    embedding = _embedding_with_grad(grad)
    before = embedding.weight.detach().clone()
    move_embedding_weights(embedding, 0.5)
    assert torch.equal(embedding.weight, before)


def test_without_a_gradient_nothing_moves():
    embedding = torch.nn.Embedding(10, 4)
    storage = embedding.weight.data_ptr()
    clean = move_embedding_weights(embedding, 0.5)
    assert clean.data_ptr() == storage == embedding.weight.data_ptr()


def test_pgd_first_step_stays_within_eps_and_leaves_the_clean_matrix_alone():
    embedding = _embedding_with_grad()
    before = embedding.weight.detach().clone()
    clean = move_embedding_weights(embedding, 0.1, alpha=0.3)  # a step of 0.3, pulled back to distance 0.1
    assert torch.equal(clean, before)
    assert (embedding.weight.detach() - before).norm().item() == pytest.approx(0.1, rel=1e-4)
    put_back_embedding_weights(embedding, clean)
    assert torch.equal(embedding.weight, before)


def test_the_fgm_step_gives_the_hand_written_recipes_gradients_bit_for_bit():
    torch.manual_seed(0)
    model = TextCNN((12,), 3, vocab_size=30).eval()  # eval: no dropout, so both runs agree
    ids, y = torch.randint(1, 30, (8, 12)), torch.arange(8) % 3
    ids[:, 9:] = 0  # padding
    params = [p for p in model.parameters() if p.requires_grad]
    weight, before = model.embedding.weight, model.embedding.weight.detach().clone()
    eps, w = 0.7, 0.5

    def update(loss, after=None):
        model.zero_grad(set_to_none=True)
        loss.backward()
        after()
    attack = type("Bound", (), {"steps": 1, "alpha": eps, "target": "embedding_weights", "name": "fgm"})()
    task = TextClassification(3)
    mode = build_mode(OmegaConf.create({"name": "mixed", "adv_weight": w}), task)
    step = mode.step(Batch(model, model, task, ids, y, attack=attack, eps=eps, autocast=contextlib.nullcontext,
                           update=update, backward=lambda loss: loss.backward()))
    got = [p.grad.clone() for p in params]
    assert torch.equal(weight, before)  # the matrix is back

    # the recipe as it is usually written
    model.zero_grad(set_to_none=True)
    clean_loss = (1 - w) * F.cross_entropy(model(ids), y)
    clean_loss.backward()
    backup = weight.data.clone()
    weight.data.add_(eps * weight.grad / weight.grad.norm())
    adv_loss = w * F.cross_entropy(model(ids), y)
    adv_loss.backward()
    weight.data = backup
    for a, p in zip(got, params):
        assert torch.equal(a, p.grad)
    assert torch.equal(step.loss, (clean_loss + adv_loss).detach())
