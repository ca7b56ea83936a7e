"""Checks on a composed config before any work: unknown keys, values out of range, the attacks a training mode
accepts, what a resume may change, and what a stored config may build."""
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advbench.attacks.spec import build_attack
from advbench.config import Config
from advbench.data import task_of
from advbench.eps import parse_eps
from advbench.errors import AdvbenchError
from advbench.evaluation.plan import EvalPlan, validation_attack
from advbench.runtime.rundir import shipped_targets
from advbench.tasks import TASKS
from advbench.training.modes import build_mode

# key -> (test, what is accepted); None values pass (null means "off" or "all" where the schema allows it)
_RANGES = {
    "epochs": (lambda v: v >= 1, "a positive integer"),
    "batch_size": (lambda v: v >= 1, "a positive integer"),
    "eval.batch_size": (lambda v: v == "auto" or (isinstance(v, int) and v >= 1), "a positive integer or auto"),
    "eval.n_examples": (lambda v: v >= 1, "a positive integer or null (all)"),
    "val.n_examples": (lambda v: v >= 1, "a positive integer or null (all)"),
    "dataset.n_train": (lambda v: v >= 1, "a positive integer or null (all)"),
    "lr": (lambda v: v > 0, "a positive number"),
    "weight_decay": (lambda v: v >= 0, "a non-negative number"),
    "threads": (lambda v: v >= 1, "a positive integer or null (torch's default)"),
    "grad_clip": (lambda v: v > 0, "a positive number or null (no clipping)"),
    "eps_warmup_epochs": (lambda v: v >= 0, "a non-negative number of epochs"),
    "training.replays": (lambda v: v >= 1, "a positive integer"),
    "training.adv_weight": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "training.beta": (lambda v: v >= 0, "a non-negative number"),
    "training.guard.n_examples": (lambda v: v >= 1, "a positive integer"),
    "training.guard.steps": (lambda v: v >= 1, "a positive integer"),
    "training.guard.max_drop": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "eval.save_examples": (lambda v: v >= 0, "0 (none) or a positive number of examples"),
    "eval.sanity.sample": (lambda v: v >= 1, "a positive number of examples"),
    "eval.sanity.zero_grad_frac": (lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    "saliency.n_examples": (lambda v: v >= 1, "a positive integer"),
    "saliency.smoothgrad_samples": (lambda v: v >= 1, "a positive integer"),
    "stop_after_epoch": (lambda v: v >= 1, "a positive epoch number or null"),
    "eval.det_score": (lambda v: 0 <= v <= 1, "a score in [0, 1]"),
    "eval.det_recall": (lambda v: 0 < v <= 1, "a recall in (0, 1]"),
}
# What a resumed run may change: how it runs, how long, and how it is evaluated; never what it trains.
RESUMABLE = ("epochs", "device", "threads", "progress", "resume", "stop_after_epoch", "eval", "dataset.root",
             "dataset.download")


def check_keys(cfg) -> None:
    """Every key is one the schema knows: ``+unknown_key=1`` and ``+attack.bogus=1`` are errors, not ignored."""
    try:
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise AdvbenchError(f"{key} is not a key advbench knows ({str(err).splitlines()[0]}): see "
                            "`advbench --cfg job` for the keys of this config") from None


def check_config(cfg) -> None:
    """Everything the schema cannot check, before any work: ranges, eps, every attack at every eps."""
    parse_eps(cfg.eps)
    for key, (ok, accepted) in _RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not ok(value):
            raise AdvbenchError(f"{key}={value}: expected {accepted}")
    if any(s <= 0 for s in cfg.dataset.std):
        raise AdvbenchError(f"dataset.std={list(cfg.dataset.std)}: expected positive numbers, one per channel")
    task = TASKS[task_of(cfg.dataset)](0)  # the data set's task, before loading it (no class count needed)
    mode = build_mode(cfg.training, task)
    if cfg.task == "train":
        mode.check(build_attack(cfg.attack, cfg.eps, task))
        validation_attack(task, cfg.val.attack, cfg.attack, cfg.eps)
    EvalPlan(task, dict(cfg.eval.attacks), cfg.attack, cfg.eps, eps_list=cfg.eval.eps_list,
             save_examples=cfg.eval.save_examples).check()


def command_line() -> dict:
    """key -> value text of this command line's overrides (``+``/``~`` prefixes dropped)."""
    pairs = (o.split("=", 1) for o in HydraConfig.get().overrides.task if "=" in o)
    return {key.lstrip("+~"): value for key, value in pairs}


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def check_resume_overrides(stored, cfg, done_epochs: int) -> None:
    """A resume continues the same experiment: refuse overrides that change it, naming the keys."""
    changed = []
    for key in command_line():
        if key.startswith("hydra") or any(key == k or key.startswith(k + ".") for k in RESUMABLE):
            continue
        if _plain(OmegaConf.select(stored, key)) != _plain(OmegaConf.select(cfg, key)):
            changed.append(key)
    if changed:
        raise AdvbenchError(f"resume: {', '.join(sorted(changed))} would change the experiment being resumed; a "
                            f"resume may change only {', '.join(RESUMABLE)} (eval.*); start a new run instead")
    if cfg.epochs < done_epochs:
        raise AdvbenchError(f"epochs={cfg.epochs} is below the {done_epochs} epochs the resumed run has finished")


def _targets(node, path=""):
    """(path, value) of every ``_target_`` in a plain container."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield here, value
            yield from _targets(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


def check_stored_targets(stored: dict, source: str) -> None:
    """A stored config is data: it may build only the models and optimizers advbench ships, or a ``_target_``
    given on this command line. Anything else, nested ``_target_``s included, is refused before it runs."""
    given = command_line()
    from advbench.run_config import LEGACY_TARGETS
    shipped = set(shipped_targets("model").values()) | set(LEGACY_TARGETS)
    allowed = {"model._target_": shipped | {given.get("model._target_")},
               "optimizer._target_": set(shipped_targets("optimizer").values()) | {given.get("optimizer._target_")},
               # dataset=custom: the user's data set classes, only as this command line names them again
               **{f"dataset.{key}._target_": {given.get(f"dataset.{key}._target_")}
                  for key in ("train_set", "val_set", "test_set")}}
    for path, target in _targets(stored):
        if path not in allowed:
            raise AdvbenchError(f"{source}: its config holds a nested {path}={target}; refused: a stored config is "
                                "data, and advbench builds nothing from it but the model and the optimizer")
        if target not in allowed[path]:
            raise AdvbenchError(f"{source}: its config asks to build {path}={target}, which is not an option "
                                f"advbench ships; refused (a stored config is data, not code). If you trust it, "
                                f"give {path}={target} on the command line")
