"""The one registry of tasks: each task package registers its ``Task`` class and the data sets that pose it.

The core never imports a task package: it asks the registry, which imports the built-in packages by name on first
use, then any installed package that declares an ``advbench.tasks`` entry point. A new problem is a new package
that calls ``register`` (see docs/architecture.md), with no edit to attacks/, training/ or evaluation/.
"""
import importlib
from importlib.metadata import entry_points
from typing import Callable

from advbench.errors import AdvbenchError

BUILTIN = ("classification", "text", "detection", "segmentation")  # packages under advbench/tasks/
DEFAULT = "classification"  # the problem of an attack or evaluation called from Python without one

_TASKS: dict = {}  # task key -> Task subclass
_SOURCES: dict = {}  # dataset.name -> (loader(cfg) -> Source or RawSets, task key)
_loading = False


def register(key: str, task_cls, sources: dict[str, Callable] | None = None) -> None:
    """Make ``task_cls`` the task ``key`` and the task of each data set in ``sources`` (dataset.name -> loader)."""
    if key in _TASKS and _TASKS[key] is not task_cls:
        raise AdvbenchError(f"task {key!r} is registered twice ({_TASKS[key].__module__}, {task_cls.__module__})")
    taken = {name: _SOURCES[name][1] for name in sources or {} if name in _SOURCES and _SOURCES[name][1] != key}
    if taken:
        raise AdvbenchError(f"dataset.name {', '.join(taken)} already poses task {', '.join(set(taken.values()))}")
    _TASKS[key] = task_cls
    task_cls.key = key
    _SOURCES.update({name: (loader, key) for name, loader in (sources or {}).items()})


def unregister(key: str) -> None:
    """Forget task ``key`` and its data sets (tests that define a task of their own)."""
    _TASKS.pop(key, None)
    for name in [n for n, (_, k) in _SOURCES.items() if k == key]:
        del _SOURCES[name]


def _load() -> None:
    global _loading
    if _loading:
        return
    _loading = True  # before importing: a package's own import of this module must not recurse
    for name in BUILTIN:
        importlib.import_module(f"advbench.tasks.{name}")
    for point in entry_points(group="advbench.tasks"):
        point.load()


def tasks() -> dict:
    """{task key: Task subclass}, every registered task: the built-in ones in ``BUILTIN``'s order, then the others
    as registered. Not import order, which a caller may change (importing a detector first imports detection)."""
    _load()
    rank = {key: i for i, key in enumerate(BUILTIN)}
    return dict(sorted(_TASKS.items(), key=lambda item: rank.get(item[0], len(rank))))


def task_class(key: str):
    """The Task subclass registered as ``key``; one line naming the known keys otherwise."""
    found = tasks()
    if key not in found:
        raise AdvbenchError(f"task {key!r} is unknown: expected one of {', '.join(found)}")
    return found[key]


def sources() -> dict:
    """{dataset.name: (loader, task key)} of every registered data set."""
    _load()
    return dict(_SOURCES)


def task_of(dataset_cfg) -> str:
    """The task key data set ``dataset_cfg.name`` poses, without loading it."""
    found = sources()
    if dataset_cfg.name not in found:
        raise AdvbenchError(f"dataset.name={dataset_cfg.name!r} is unknown: expected one of {', '.join(found)}")
    return found[dataset_cfg.name][1]


def default_task():
    """The task an attack serves when the caller names none: a classifier's, classes unknown."""
    return task_class(DEFAULT)()


def model_tasks() -> dict:
    """{model option: (task keys)}: the shipped model options (conf/model/) and the tasks that declare them (an mlp
    regresses points as well as it classifies)."""
    declared: dict = {}
    for key, cls in tasks().items():
        for option in cls.models:
            declared[option] = (*declared.get(option, ()), key)
    return declared
