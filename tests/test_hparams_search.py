"""hparams_search=robust_optuna: Optuna trials that maximize the robust validation accuracy, never the test one."""
import json
import logging
import re

import pytest
import yaml
from hydra.experimental.callback import Callback

from helpers import DIGITS, cli, one_line_error


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


def sweep_config(*sweeps, sweeper="hparams_search=robust_optuna"):
    """The composed config a sweep starts from (hydra node included), with ``sweeps`` on its command line."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from conftest import CONF
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=[sweeper, *DIGITS] if sweeper else DIGITS,
                      return_hydra_config=True)
    OmegaConf.set_struct(cfg, False)
    cfg.hydra.overrides.task = [*cfg.hydra.overrides.task, *sweeps]
    return cfg


@pytest.mark.parametrize("sweep, expected", [
    ("lr=tag(log,interval(0,1))", "lr=tag(log,interval(0,1)): a log-scale interval needs low > 0"),
    ("+lrr=choice(1,2)", "+lrr=choice(1,2): a trial would be refused: lrr is not a key advbench knows"),
    ("weight_decay=interval(-1,-0.5)", "a trial would be refused: weight_decay=-1.0: expected a non-negative"),
    ("epochs=interval(1,3)", "epochs=interval(1,3): interval() draws floats and epochs takes integers"),
    ("epochs=range(3,1)", "epochs=range(3,1): the range holds no value"),
    ("eps=choice(8/255,2)", "eps=choice(8/255,2): a trial would be refused: eps=2 is above 1"),
])
def test_a_search_space_whose_trials_would_fail_is_refused(sweep, expected):
    from advbench.search_space import check_search_space
    from advbench.errors import AdvbenchError
    with pytest.raises(AdvbenchError, match=re.escape(expected)):
        check_search_space(sweep_config(sweep))


def test_the_shipped_search_space_and_a_grid_pass_the_search_space_check():
    from advbench.search_space import check_search_space
    from advbench.errors import AdvbenchError
    check_search_space(sweep_config("model.hidden=choice(16,32)", "eps=choice(2/255,0.1)"))
    check_search_space(sweep_config("epochs=0,1", sweeper=None))  # a grid: each job is checked on its own
    cfg = sweep_config()
    cfg.hydra.sweeper.n_trials = 0
    with pytest.raises(AdvbenchError, match="hydra.sweeper.n_trials=0: expected a positive number of trials"):
        check_search_space(cfg)


class SearchSpaceCheck(Callback):
    """check_search_space as a sweep's start runs it (a Hydra callback), given on the command line."""

    def on_multirun_start(self, config, **kwargs):
        from advbench.search_space import check_search_space
        from advbench.errors import AdvbenchError, Refused
        try:
            check_search_space(config)
        except AdvbenchError as err:
            logging.getLogger("advbench").error("%s", err)
            raise Refused(2)


def test_a_bad_search_space_is_refused_before_the_first_trial(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    code, err = cli("-m", "hparams_search=robust_optuna", *DIGITS, "weight_decay=interval(-1,-0.5)",
                    "+hydra.callbacks.search_space._target_=test_hparams_search.SearchSpaceCheck",
                    f"hydra.sweep.dir={tmp_path}/s", cwd=tmp_path)
    assert code == 2, err
    one_line_error(err, "weight_decay=interval(-1,-0.5): a trial would be refused: weight_decay=-1.0")
    assert not list(tmp_path.rglob("status"))  # no trial began
