"""Training modes, model selection and paper experiments through the real CLI, on tiny data."""
import json
from pathlib import Path

import pytest

from conftest import compose_config
from test_cli import TINY, advbench

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parent.parent / "conf" / "experiment").glob("*.yaml"))
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
    "mnist": ["dataset.channels=1", "dataset.image_size=28"],
    "cifar10": ["dataset.channels=3", "dataset.image_size=32", "dataset.mean=[0.5,0.5,0.5]",
                "dataset.std=[0.25,0.25,0.25]"],
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_a_smoke_variant(tmp_path, experiment):
    text = (Path(__file__).parent.parent / "conf" / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_") and "Reported" in text or "no paper number" in text
    data = next((v for k, v in SMOKE_DATA.items() if f"/dataset: {k}" in text), [])
    width = ["model.width=8"] if "preact_resnet18" in text else []
    attacks = compose_config([f"+experiment={experiment}"]).eval.attacks
    fewer_steps = [f"eval.attacks.{name}.{k}={v}" for name in attacks for k, v in (("steps", 2), ("restarts", 1))]
    advbench(f"+experiment={experiment}", *(["dataset=synthetic"] + data if data else []), *width, "epochs=1",
             "batch_size=32", "dataset.n_train=96", "dataset.val_size=16", "val.n_examples=16",
             "eval.n_examples=16", "attack.steps=2", *fewer_steps, "training.guard.n_examples=16",
             "progress=false", "amp=off", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["n_examples"] == 16 and 0 <= results["robust_acc"] <= results["clean_acc"]


FMNIST_SUBSET = ["dataset.n_train=6000", "dataset.val_size=500", "val.n_examples=200", "eval.n_examples=200",
                 "schedule=constant", "lr=5e-3", "training.guard.n_examples=256", "progress=false", "threads=2"]


def test_overfitting_guard_fires_on_a_collapsing_run_and_rolls_back(tmp_path):
    # FGSM without a random start at a large eps overfits catastrophically (Wong et al. 2020, Fig. 1).
    advbench("training=fast", "attack=fgsm", "eps=0.2", "epochs=15", *FMNIST_SUBSET,
             f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    guard = results["training"]["guard"]
    assert guard["fired"] and guard["action"] == "rollback"
    assert guard["rolled_back_to"] == guard["epoch"] - 1 == results["training"]["epochs_run"] - 1 < 15
    assert max(guard["pgd_acc"]) - guard["pgd_acc"][-1] > 0.2
    assert "catastrophic overfitting" in (tmp_path / "run" / "advbench.log").read_text()


def test_overfitting_guard_stays_silent_on_a_normal_run(tmp_path):
    advbench("training=fast", "attack=fgsm_rs", "eps=0.1", "epochs=3", *FMNIST_SUBSET,
             f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["training"]["guard"]["fired"] is False and results["training"]["epochs_run"] == 3
    assert len(results["training"]["guard"]["pgd_acc"]) == 3
