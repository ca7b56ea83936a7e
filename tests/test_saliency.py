"""Saliency maps: the gradient of each loss term, and job=saliency through the CLI."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from advbench.attacks.spec import Attack
from advbench.evaluation.saliency import smoothgrad, term_gradients
from advbench.tasks.classification import Classification
from advbench.training import build_mode
from helpers import advbench, png_size


@pytest.mark.parametrize("mode", ["mixed", "trades", "mart"])
def test_each_loss_term_has_its_own_gradient_map(trained_mlp, digits, mode):
    x, y = digits.test[0][:16], digits.test[1][:16]
    x_adv = Attack("pgd", "linf", 0.1, 0.03, 5, True)(trained_mlp, x, y)
    task = Classification(10)
    terms = term_gradients(trained_mlp, x, x_adv, y, mode_of(mode), task)
    assert len(terms) == 2
    first, second = terms.values()
    assert first.shape == second.shape == x.shape
    assert first.abs().sum() > 0 and second.abs().sum() > 0
    cos = torch.nn.functional.cosine_similarity(first.flatten(), second.flatten(), dim=0)
    assert cos < 0.99  # different terms look at different pixels
    assert all(p.grad is None for p in trained_mlp.parameters())
    assert term_gradients(trained_mlp, x, x_adv, y, mode_of("adversarial"), task) == {}


def mode_of(name):
    return build_mode(OmegaConf.create({"name": name, "beta": 6.0, "adv_weight": 0.5}), Classification(10))


def test_the_terms_saliency_draws_are_those_the_step_sums(trained_mlp, digits):
    x, y = digits.test[0][:16], digits.test[1][:16]
    x_adv = Attack("pgd", "linf", 0.1, 0.03, 5, True)(trained_mlp, x, y)
    for name in ("mixed", "trades", "mart"):
        mode, task = mode_of(name), Classification(10)
        clean, adv = trained_mlp(x), trained_mlp(x_adv)
        per_term = [term.fn(clean, adv, True) for term in mode.terms(task, y).values()]
        assert torch.allclose(sum(per_term), sum(term.fn(clean, adv, False).mean()
                                                 for term in mode.terms(task, y).values()), atol=1e-5)


def test_smoothgrad_averages_noisy_gradients(trained_mlp, digits):
    x, y = digits.test[0][:8], digits.test[1][:8]
    torch.manual_seed(0)
    objective = Classification(10).objective()
    smooth = smoothgrad(trained_mlp, x, lambda out: objective(out, y), samples=8, sigma=0.15)
    assert smooth.shape == x.shape and smooth.abs().sum() > 0


def test_saliency_task_writes_one_grid_per_run(tmp_path):
    advbench("dataset=digits", "model=mlp", "model.hidden=32", "training=trades", "attack=pgd", "attack.steps=2",
             "epochs=2", "progress=false", "threads=1", "eval.n_examples=50", f"hydra.run.dir={tmp_path}/run",
             cwd=tmp_path)
    proc = advbench("job=saliency", f"checkpoint={tmp_path}/run", "saliency.n_examples=3",
                    "saliency.smoothgrad_samples=4", "progress=false", f"hydra.run.dir={tmp_path}/sal",
                    cwd=tmp_path)
    files = json.loads((tmp_path / "sal" / "results.json").read_text())["files"]
    assert files == ["saliency.png"]
    width, height = png_size(tmp_path / "sal" / "saliency.png")
    assert width > 700 and height > 300  # 3 images + 4 maps (|dL/dx|, SmoothGrad, 2 TRADES terms) by 3 rows
    assert "beta * KL(p(x) || p(x_adv))" in proc.stderr and "SmoothGrad" in proc.stderr


def test_saliency_maps_of_a_row_share_one_colour_scale(trained_mlp, digits, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import advbench.tasks.classification.saliency as saliency
    from advbench.attacks import Attack
    from advbench.config import SaliencyConf
    from advbench.training import build_mode
    figures = []
    monkeypatch.setattr(saliency, "save_figure", lambda fig, path: figures.append(fig))
    settings = OmegaConf.structured(SaliencyConf(n_examples=2, smoothgrad_samples=3))
    mode = build_mode(OmegaConf.create({"name": "trades", "beta": 6.0}), Classification(10))
    attack = Attack("pgd", "linf", 0.1, 0.05, steps=2, task=Classification(10))
    saliency.write_saliency(trained_mlp, digits.test, attack, mode, settings, "cpu", tmp_path)
    (fig,) = figures
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    rows = [grid[i * 7:(i + 1) * 7] for i in range(2)]
    for row in rows:
        limits = {ax.images[0].get_clim() for ax in row[3:]}
        assert len(limits) == 1 and next(iter(limits))[1] > 0  # four maps, one scale
    assert rows[0][3].images[0].get_clim() != rows[1][3].images[0].get_clim()  # each row its own
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 2


def test_a_sparse_gradient_is_not_drawn_empty_beside_smoothgrad():
    """One scale per row, ending at the 99th percentile of the row's values: a plain gradient whose few pixels
    tower over the rest (as input gradients do) still shows beside SmoothGrad's smooth map."""
    from advbench.tasks.classification.saliency import shared_top
    plain = torch.full((28, 28), 0.01)
    plain[0, 0] = 100.0  # one spike, 10,000x the rest
    smooth = torch.full((28, 28), 0.02)
    top = shared_top([plain, smooth])
    assert top == pytest.approx(0.02) and (plain > 0.25 * top).float().mean() > 0.99  # not black: 50% of the scale
    assert shared_top([torch.zeros(4, 4)]) == 1.0  # nothing to show: a valid scale all the same
