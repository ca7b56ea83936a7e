"""An Optuna search space checked before its first trial: every value a trial may draw goes through a run's checks."""
import math

from omegaconf import OmegaConf

from advbench.checks import NUMBERS, check_config, check_keys
from advbench.errors import AdvbenchError
from advbench.run_config import plain
from advbench.runtime.rundir import CONF_DIR


def _drawn(override) -> list:
    """The values a sweep override may give a trial: every choice; a range's first and last; an interval's ends
    and middle (Optuna draws floats between them). A space that can give nothing is refused."""
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep
    value, line = override.value(), override.input_line
    if isinstance(value, RangeSweep):
        count = math.ceil((value.stop - value.start) / value.step) if value.step else 0
        if count <= 0:
            raise AdvbenchError(f"{line}: the range holds no value (start {value.start}, stop {value.stop}, step "
                                f"{value.step})")
        return [value.start, value.start + (count - 1) * value.step]
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise AdvbenchError(f"{line}: expected interval(low, high) with finite low <= high")
        if "log" in value.tags and low <= 0:
            raise AdvbenchError(f"{line}: a log-scale interval needs low > 0, got {low:g}")
        return [low, (low + high) / 2, high]
    return list(override.sweep_iterator())


def check_search_space(config) -> None:
    """An Optuna search's space (hydra.sweeper.params and the command line's sweeps), checked before its first
    trial: each value it may draw goes through the checks a run's config does, so a space whose trials would all
    fail (a log interval from 0, a key the config lacks, weight_decay below 0) is one line, not a traceback at the
    sweep's end. ``config`` is the sweep's composed config, hydra node included."""
    if "optuna" not in str(OmegaConf.select(config, "hydra.sweeper._target_") or ""):
        return  # a grid's jobs are independent: each is checked, and recorded, on its own
    from hydra.core.override_parser.overrides_parser import OverridesParser
    n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials")
    if not (isinstance(n_trials, int) and n_trials >= 1):
        raise AdvbenchError(f"hydra.sweeper.n_trials={n_trials}: expected a positive number of trials")
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except Exception as err:  # Hydra's OverrideParseException: its own message is one line
        raise AdvbenchError(f"hydra.sweeper.params: {str(err).splitlines()[0]}") from None
    base = OmegaConf.to_container(config, resolve=False)
    base.pop("hydra", None)
    groups = set(OmegaConf.select(config, "hydra.runtime.choices") or {})
    kinds = {key: kind for key, kind, _ in NUMBERS}
    for override in overrides:
        key = override.key_or_group
        if not override.is_sweep_override() or key.startswith("hydra.") or key in groups or (CONF_DIR / key).is_dir():
            continue  # a config group's options are Hydra's to check
        if override.is_interval_sweep() and kinds.get(key) is int:
            raise AdvbenchError(f"{override.input_line}: interval() draws floats and {key} takes integers: use "
                                "range(low, high) or choice(...)")
        for value in _drawn(override):
            trial = OmegaConf.create(base)
            OmegaConf.update(trial, key, value, merge=True, force_add=True)
            try:
                check_keys(trial)
                check_config(plain(trial))
            except AdvbenchError as err:
                raise AdvbenchError(f"{override.input_line}: a trial would be refused: {err}") from None
