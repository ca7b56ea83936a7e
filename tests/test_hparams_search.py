"""hparams_search=robust_optuna: Optuna trials that maximize the robust validation accuracy, never the test one."""
import json

import pytest
import yaml

from helpers import DIGITS, cli


def test_optuna_search_runs_trials_and_maximizes_the_validation_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cli("-m", "hparams_search=robust_optuna", *DIGITS, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}/s",
        cwd=tmp_path, check=True)
    found = yaml.safe_load((tmp_path / "s" / "optimization_results.yaml").read_text())
    assert set(found["best_params"]) == {"lr", "weight_decay", "eps_warmup_epochs"}
    trials = sorted((tmp_path / "s").glob("*/seed=0"))
    assert len(trials) == 2
    best_val = []
    for trial in trials:
        rows = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
        best_val.append(max(r["val_robust_acc"] for r in rows))
        assert json.loads((trial / "results.json").read_text())["training"]["best_val"]["robust"] == best_val[-1]
    assert found["best_value"] == pytest.approx(max(best_val))
