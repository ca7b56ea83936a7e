"""Shared fixtures: Hydra's compose API on conf/, and a small model trained on scikit-learn's digits."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from advbench.config import register_configs
from advbench.data import load_data
from advbench.models import mlp

CONF = Path(__file__).resolve().parent.parent / "advbench" / "conf"
register_configs()


def compose_config(overrides=()):
    """The composed config for ``overrides``, as the CLI would see it (without the hydra node)."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def group_options():
    """(group, option) for every YAML option of every config group in conf/."""
    global_packages = ("experiment", "hparams_search")  # `# @package _global_` files, tested on their own
    return [(d.name, f.stem) for d in sorted(CONF.iterdir()) if d.is_dir() and d.name not in global_packages
            for f in sorted(d.glob("*.yaml"))]


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, split as dataset=digits splits them."""
    return load_data(compose_config(["dataset=digits"]).dataset)


@pytest.fixture(scope="session")
def trained_mlp(digits):
    """An MLP trained cleanly on digits to ~95% test accuracy (a few seconds on a CPU)."""
    torch.manual_seed(0)
    x, y = digits.train
    model = mlp(digits.shape, digits.n_classes, [0.3053], [0.3760], hidden=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        for i in range(0, len(y), 128):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 128]), y[i:i + 128])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return model


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the tests of a module that asks for it (pytestmark), then the count it found."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

