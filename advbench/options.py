"""Which tasks each config option serves, and which config keys apply to the options chosen, both derived from
the registries (tasks and their data sets, models and modes; attack kinds; the evaluation plan) and the option
YAMLs in conf/, never listed by hand: a task registered later is served by whatever fits it.

``advbench --help`` (cli.py) groups the options by task and prints only the keys that apply; the tests compose
each option with partners of a task it serves.
"""
import dataclasses
from functools import lru_cache
from importlib.resources import files

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advbench.attacks.spec import build_attack
from advbench.config import AttackConf, Config, DatasetConf, EvalConf, TrainingConf
from advbench.errors import AdvbenchError
from advbench.evaluation.plan import EvalPlan
from advbench.tasks import sources, task_class, task_of, tasks
from advbench.training.modes import MODES

CONF = files("advbench.conf")
EVERY_TASK = ("optimizer", "logger", "hparams_search", "hydra/launcher")  # how a run learns, logs, searches, runs
GROUPS = ("dataset", "model", "attack", "training", "eval", "experiment", *EVERY_TASK)
# Attack keys that mean something only to some tasks: key -> the task property that gives them a meaning.
ATTACK_KEYS = {
    "terms": lambda task: len(task.terms) > 1,  # which of the loss's terms to ascend, and their weights
    "normalize_terms": lambda task: len(task.terms) > 1,
    "goal": lambda task: task.crafts_goals,  # targets built from the predictions (TOG)
    "relabel": lambda task: task.crafts_goals,
    "descend": lambda task: task.crafts_goals,
    "target": lambda task: task.perturbs != "input",  # embeddings rather than pixels
}
JOB_KEYS = {"checkpoint": ("eval", "saliency"), "saliency": ("saliency",)}  # read only by these jobs


def options(group: str) -> list:
    """The options advbench ships for ``group`` (``hydra/launcher`` for a nested group), sorted."""
    folder = CONF.joinpath(*group.split("/"))
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml")) if folder.is_dir() else []


@lru_cache(maxsize=None)
def _yaml(group: str, option: str) -> dict | None:
    """Option ``option`` of ``group`` as written (None: advbench ships no such option); config.yaml for ``""``."""
    path = CONF.joinpath(*[part for part in group.split("/") if part], f"{option}.yaml")
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else None


def _typed(node, schema) -> DictConfig:
    """An option's YAML over its schema's defaults, without its defaults list."""
    body = {k: v for k, v in (OmegaConf.to_container(node) if isinstance(node, DictConfig) else node).items()
            if k != "defaults"}
    merged = OmegaConf.merge(OmegaConf.structured(schema), body)
    return OmegaConf.create(OmegaConf.to_container(merged, enum_to_str=True))  # as the run sees it: plain text


def _eval_preset(node) -> DictConfig:
    preset = _typed(node, EvalConf)
    preset.attacks = {name: _typed(spec, AttackConf) for name, spec in (node.get("attacks") or {}).items()}
    return preset


def _fits(build) -> bool:
    try:
        build()
    except AdvbenchError:
        return False
    return True


def _runs_some(task, preset) -> bool:
    """The preset's plan for ``task`` is accepted and runs at least one of its attacks: text evaluates with the
    run's own attack, so a preset of image attacks would do nothing for it."""
    plan = EvalPlan(task, dict(preset.attacks), None, Config.eps, preset.n_examples, preset.eps_list,
                    preset.save_examples, preset.sanity, preset.cascade)
    return _fits(plan.check) and (not preset.attacks or bool(plan.attacks()))


def serves(group: str, option: str) -> tuple:
    """The task keys (in registry order) that option ``option`` of config group ``group`` serves."""
    if option not in options(group):
        raise AdvbenchError(f"{group}={option}: expected one of {', '.join(options(group))}")
    return _serves(group, option, tuple(tasks().items()))


@lru_cache(maxsize=None)
def _serves(group: str, option: str, registered: tuple) -> tuple:
    node, keys = _yaml(group, option), tuple(key for key, _ in registered)
    if group == "dataset":  # the registry names each data set's task
        return tuple(key for key in keys if sources().get(node.get("name"), (None, None))[1] == key)
    if group == "model":  # each task declares its models; one no task declares builds the user's own module
        return tuple(key for key, cls in registered if option in cls.models) or keys
    if group == "training":
        return tuple(key for key, cls in registered if node.get("name") in cls.modes)
    if group == "attack":
        spec = _typed(node, AttackConf)  # built for each task as a run builds it: accepted means served
        return tuple(key for key, cls in registered
                     if _fits(lambda: build_attack(spec, Config.eps, cls.configured())))
    if group == "eval":
        preset = _eval_preset(node)
        return tuple(key for key, cls in registered if _runs_some(cls.configured(preset), preset))
    if group == "experiment":  # the options it selects; the default data set unless it picks one
        chosen = {"dataset": _default("dataset")}
        for entry in node.get("defaults", []):
            for slot, picked in (entry.items() if isinstance(entry, dict) else ()):
                chosen[slot.split("/")[-1]] = picked
        served = [set(serves(g, o)) for g, o in chosen.items() if g in GROUPS and o is not None]
        return tuple(key for key in keys if all(key in s for s in served))
    return keys  # optimizer, logger, hparams_search, hydra/launcher: any task


def _default(group: str) -> str:
    """The option config.yaml's defaults list picks for ``group``."""
    for entry in _yaml("", "config")["defaults"]:
        if isinstance(entry, dict) and group in entry:
            return entry[group]
    raise AdvbenchError(f"config.yaml picks no default {group}")


class _Reads:
    """The eval config as ``Task.configured`` sees it, noting each key read."""

    def __init__(self, node):
        self._node, self.read = node, set()

    def __getattr__(self, key):
        self.read.add(key)
        return self._node[key]

    __getitem__ = __getattr__

    def get(self, key, default=None):
        self.read.add(key)
        return self._node.get(key, default)


def own_eval_keys(cls) -> set:
    """The eval keys task class ``cls`` reads that the evaluation plan does not (detection's det_score, ...)."""
    seen = _Reads(OmegaConf.structured(EvalConf))
    cls.configured(seen)
    return seen.read - {f.name for f in dataclasses.fields(EvalPlan)}


def _leaves(tree, prefix: str = "") -> list:
    if not isinstance(tree, dict) or not tree:
        return [prefix[:-1]]
    return [leaf for key, value in tree.items() for leaf in _leaves(value, f"{prefix}{key}.")]


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _set_by(group: str, option: str | None) -> set | None:
    """The keys option ``option``'s YAML sets; None when advbench ships no such option (the user's own)."""
    found = _yaml(group, option) if option else None
    return None if found is None else {k for k in found if k != "defaults"}


def applies(cfg, choices: dict) -> set:
    """The dotted leaf keys of the composed ``cfg`` (no hydra node) that apply to its chosen options
    (``choices``: group -> option, as hydra.runtime.choices holds them)."""
    tree = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    cfg, keys = OmegaConf.create(tree), set(_leaves(tree))  # enums as their names, as a run reads them
    task = task_class(task_of(cfg.dataset)).configured()
    drop = []
    defaults = OmegaConf.to_container(OmegaConf.structured(DatasetConf))
    set_here = _set_by("dataset", choices.get("dataset"))
    if set_here is not None:  # the schema carries every data set's keys: this one's YAML sets its own
        drop += [f"dataset.{k}" for k, v in tree["dataset"].items()
                 if k != "name" and k not in set_here and v == defaults.get(k)]
    set_here = _set_by("training", choices.get("training"))
    if set_here is not None:  # the mode's YAML sets what it reads; a nested group (guard) serves every mode
        nested = {f.name for f in dataclasses.fields(TrainingConf) if dataclasses.is_dataclass(f.type)}
        drop += [f"training.{k}" for k in tree["training"] if k != "name" and k not in set_here | nested]
    mode = MODES.get(str(cfg.training.name))
    uses_attack = (str(cfg.job) == "train" and mode is not None and mode.accepts is not None)
    if not (uses_attack or task.evaluates_with_training_attack):
        drop.append("attack")  # training=standard and job=eval leave it unused, save where it is the evaluation's
    if task.evaluates_with_training_attack:
        drop.append("val.attack")  # validation runs the run's own attack
    others = set().union(*(own_eval_keys(cls) for cls in tasks().values())) - own_eval_keys(type(task))
    drop += [f"eval.{k}" for k in others]
    evaluated = _evaluated(cfg, task)
    drop += [f"eval.attacks.{name}" for name in tree["eval"].get("attacks") or {} if name not in evaluated]
    entries = ["attack", "val.attack", *(f"eval.attacks.{name}" for name in evaluated)]
    drop += [f"{entry}.{key}" for entry in entries for key, fits in ATTACK_KEYS.items() if not fits(task)]
    drop += [key for key, jobs in JOB_KEYS.items() if str(cfg.job) not in jobs]
    return {k for k in keys if not any(_under(k, d) for d in drop)}


def _evaluated(cfg, task) -> list:
    """The eval.attacks entries the evaluation runs for ``task`` (all of them when they cannot be built yet)."""
    attacks = dict(cfg.eval.attacks or {})
    try:
        specs = {name: _typed(spec, AttackConf) for name, spec in attacks.items()}
        return list(EvalPlan(task, specs, None, str(cfg.eps)).attacks())
    except (AdvbenchError, OmegaConfBaseException):  # a bad value is check_config's to name: show what was given
        return list(attacks)


def keep(tree: dict, keys: set, prefix: str = "") -> dict:
    """``tree`` (a plain config) with only the leaves named in ``keys``, in its own order."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            inner = keep(value, keys, f"{path}.")
            if inner:
                out[key] = inner
        elif path in keys:
            out[key] = value
    return out


def elsewhere(group: str, option, task: str) -> tuple:
    """The tasks that option ``option`` of ``group`` serves, where ``task`` is not one of them; () for an option
    that serves ``task``, or that advbench does not ship."""
    if option not in options(group):
        return ()
    served = serves(group, option)
    return () if task in served else served


def takes(task: str, group: str, found: dict | None = None) -> list:
    """The options of ``group`` that ``task`` takes: its own, then those every task takes (``found``: by_task())."""
    found = found or by_task()
    return found[task].get(group, []) + found[None].get(group, [])


def by_task() -> dict:
    """{task key, or None for the options every task takes: {group: [its options serving that task]}}, the tasks
    in registry order; an option serving every task appears only under None."""
    keys = list(tasks())
    found = {None: {}, **{key: {} for key in keys}}
    for group in GROUPS:
        for option in options(group):
            served = serves(group, option)
            for key in [None] if len(served) == len(keys) else served:
                found[key].setdefault(group, []).append(option)
    return found
