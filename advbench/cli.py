"""The ``advbench`` command: signals handled from the first instruction, then Hydra, then the exit code.

Exit codes: 0 done; 1 the run failed (diverged, disk full, a sweep job failed, a bug: with its traceback);
2 bad input (advbench's own checks and Hydra's: unknown option or key, wrong type); 3 interrupted (SIGINT,
SIGTERM, ``stop_after_epoch``).
"""
import logging
import os
import sys

from advbench.errors import Interrupted, Refused, interruption
from advbench.runtime.signals import ignore_from_now, install_signal_handlers

log = logging.getLogger("advbench")
# Old spellings of command-line keys: old -> new. ``task`` named the job before it came to name the problem.
RENAMED = {"task": "job"}


def renamed(argv: list) -> list:
    """``argv`` with each override of a renamed key spelled the new way, and a deprecation warning for each."""
    out = []
    for arg in argv:
        prefix = arg[:len(arg) - len(arg.lstrip("+~"))]
        key, eq, value = arg[len(prefix):].partition("=")
        if not arg.startswith("-") and eq and key in RENAMED:
            log.warning("%s%s=%s is deprecated: write %s%s=%s (%s now names the problem, which the data set "
                        "poses)", prefix, key, value, prefix, RENAMED[key], value, key)
            arg = f"{prefix}{RENAMED[key]}={value}"
        out.append(arg)
    return out


HELP = ("--help", "-h")
# With these Hydra flags --help stays Hydra's: another config (its template's $APP_CONFIG_GROUPS and $CONFIG are
# Hydra's own lists then), or shell completion.
HYDRAS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--shell-completion", "-sc")


def wants_help(argv: list) -> bool:
    """``advbench [overrides] --help``: advbench's own help, composed from the overrides."""
    flags = {arg.split("=", 1)[0] for arg in argv if arg.startswith("-")}
    return any(f in flags for f in HELP) and not any(f in flags for f in HYDRAS)


def overrides_of(argv: list) -> list:
    """The overrides on a command line (``key=value``, ``+key=value``, ``~key``), not flags nor their values."""
    return [arg for arg in argv if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))]


def _first_of_sweeps(overrides: list) -> list:
    """``overrides`` with each sweep (``eps=1/255,2/255``) replaced by its first value: help shows one config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    out = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            out.append(override.input_line)
        elif not override.is_interval_sweep():  # an Optuna interval has no first value: the default stands
            out.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
    return out


def help_text(overrides: list) -> str:
    """The header and examples of hydra.help.template, the options grouped by the tasks they serve, and the keys
    of the config composed from ``overrides`` that apply to its choices. Imports torch (the task registry)."""
    from string import Template

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from advbench import options
    from advbench.config import register_configs
    from advbench.tasks import task_of
    register_configs()
    with initialize_config_module("advbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=_first_of_sweeps(overrides), return_hydra_config=True)
    tree = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    tree.pop("hydra")
    choices = dict(cfg.hydra.runtime.choices)
    keys, task, found = options.applies(OmegaConf.create(tree), choices), task_of(cfg.dataset), options.by_task()
    lines = []
    for key, groups in found.items():
        chosen = f" (this config's: dataset={cfg.dataset.name})" if key == task else ""
        lines.append(f"{key or 'every task'}{chosen}:")
        lines += [f"  {'+' * (group == 'experiment')}{group}: {', '.join(names)}" for group, names in groups.items()]
    # A chosen option of another task (the default model after dataset=digits_det) would be refused: say so.
    notes = [f"# {group}={choices[group]} does not serve {task}: {task} takes {group}="
             f"{', '.join(options.takes(task, group, found))}"
             for group in ("model", "attack", "training") if any(k.startswith(f"{group}.") for k in keys)
             if options.elsewhere(group, choices.get(group), task)]
    return Template(cfg.hydra.help.template).safe_substitute(
        APP_CONFIG_GROUPS="\n".join(lines), CONFIG="".join(f"{n}\n" for n in notes) + OmegaConf.to_yaml(
            options.keep(tree, keys)))


def print_help(overrides: list) -> None:
    """``advbench [overrides] --help`` on stdout; bad overrides: one line on stderr and exit code 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from advbench.errors import AdvbenchError
    try:
        text = help_text(overrides)
    except (HydraException, OmegaConfBaseException, AdvbenchError) as err:  # an unknown option or key
        log.error("advbench --help: %s", " ".join(str(err).split("Config search path")[0].split()))
        sys.exit(2)
    print(text)
    sys.stdout.flush()  # here, where a reader that left early is caught, not at exit


def _load_entry():
    from advbench import main as entry  # imports torch and Hydra: seconds
    return entry


def main() -> None:
    """Console entry point of ``advbench`` and ``python -m advbench``."""
    install_signal_handlers()  # before the heavy imports: a Ctrl-C during start-up is a clean stop too
    # As with `python -m`: a _target_ in the directory advbench starts from (a model, a data set) is importable.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    sys.argv[1:] = renamed(sys.argv[1:])
    started = []
    try:
        if wants_help(sys.argv[1:]):
            print_help(overrides_of(sys.argv[1:]))
            return
        entry = _load_entry()
        entry.STARTED = started
        entry.main()
    except BrokenPipeError:  # `advbench --help | head`: the reader has gone, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's recipe: no error at exit
        sys.exit(0)
    except (Interrupted, Exception) as caught:  # before the run began: nothing was written
        if not (stop := interruption(caught)):
            raise
        log.error("interrupted (%s) during start-up: nothing was written", stop)
        sys.exit(3)
    except SystemExit as done:
        # Hydra exits 1 on its own errors (unknown option or key, wrong type): bad input, like advbench's.
        hydras_own = not started and not isinstance(done, Refused)
        sys.exit(2 if done.code == 1 and hydras_own else done.code)
    finally:
        from advbench.runtime.lock import release
        release()  # the directories this command held (a caller in this process may start another run)
        ignore_from_now()


if __name__ == "__main__":
    main()
