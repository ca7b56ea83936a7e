"""Checks on a composed config before any work: unknown keys, values out of range, registered names, the model's
task, and the task, mode, attacks and evaluation plan built once (``check_config`` returns them for the run)."""
import dataclasses
import typing

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from advbench.attacks.spec import KINDS, build_attack
from advbench.attacks.threats import THREATS
from advbench.config import AttackConf, Config, is_number
from advbench.eps import parse_eps
from advbench.errors import AdvbenchError
from advbench.evaluation.plan import EvalPlan, validation_attack
from advbench.models.external import check_model_config
from advbench.run_config import LEGACY_TARGETS
from advbench.runtime.compiled import ACCEPTED as COMPILE_ACCEPTED
from advbench.runtime.rundir import shipped_targets
from advbench.runtime.trackers import check_trackers
from advbench.tasks import model_tasks, sources, task_class, task_of, tasks
from advbench.training.modes import MODES, build_mode

# key -> (test, what is accepted); None values pass (null means "off" or "all" where the schema allows it)
_RANGES = {
    "epochs": (lambda v: v >= 1, "a positive integer"),
    "compile": (lambda v: v == "auto" or v is True or v is False, COMPILE_ACCEPTED),
    "batch_size": (lambda v: v >= 1, "a positive integer"),
    "eval.batch_size": (lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                        "a positive integer or auto"),
    "eval.n_examples": (lambda v: v >= 1, "a positive integer or null (all)"),
    "val.n_examples": (lambda v: v >= 1, "a positive integer or null (all)"),
    "dataset.n_train": (lambda v: v >= 1, "a positive integer or null (all)"),
    "lr": (lambda v: v > 0, "a positive number"),
    "weight_decay": (lambda v: v >= 0, "a non-negative number"),
    "threads": (lambda v: 1 <= v <= 4096, "a positive integer (at most 4096) or null (torch's default)"),
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
    "eval.seg_threshold": (lambda v: 0 < v <= 1, "a pixel accuracy in (0, 1]"),
    "eval.own_attack_steps": (lambda v: v >= 0, "0 (the run's own attack alone) or a number of PGD steps"),
    "eval.sanity.max_pgd_gap": (lambda v: 0 <= v <= 1, "an accuracy gap in [0, 1]"),
    "training.init_mag": (lambda v: v >= 0, "a non-negative magnitude"),
    "saliency.smoothgrad_sigma": (lambda v: v >= 0, "a non-negative noise level"),
    "saliency.layer": (lambda v: isinstance(v, str) and bool(v.strip()),
                       "a module name as model.named_modules() gives it, or null (the model's default)"),
    "dataset.val_size": (lambda v: v >= 0, "0 (none) or a positive number of examples"),
    "dataset.n_classes": (lambda v: v >= 1, "a positive integer"),
    "dataset.channels": (lambda v: v >= 1, "a positive integer"),
    "dataset.image_size": (lambda v: v >= 1, "a positive number of pixels"),
    "dataset.n_test": (lambda v: v >= 1, "a positive integer"),
    "dataset.noise": (lambda v: v >= 0, "a non-negative noise level"),
    "dataset.max_len": (lambda v: v >= 1, "a positive number of tokens"),
    "dataset.max_vocab": (lambda v: v >= 1, "a positive integer"),
    "dataset.min_freq": (lambda v: v >= 0, "a non-negative count"),
    "dataset.test_size": (lambda v: 0 < v < 1, "a share in (0, 1)"),
    "dataset.n_scenes": (lambda v: v >= 1, "a positive integer"),
    "dataset.workers": (lambda v: v >= 0, "0 (load in the main process) or a positive integer"),
    "dataset.resize": (lambda v: v >= 1, "a positive number of pixels or null (no resizing)"),
}
# Per attack entry (attack, val.attack, eval.attacks.*): build_attack checks steps and restarts.
_ATTACK_RANGES = {
    "n_targets": (lambda v: v >= 1, "a positive integer"),
    "eot": (lambda v: v >= 1, "a positive integer"),
}
_ABSENT = object()


def check_keys(cfg) -> None:
    """Every key is one the schema knows: ``+unknown_key=1`` and ``+attack.bogus=1`` are errors, not ignored."""
    try:
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg))
    except ConfigKeyError as err:
        key = getattr(err, "full_key", None) or "?"
        raise AdvbenchError(f"{key} is not a key advbench knows ({str(err).splitlines()[0]}): see "
                            "`advbench --cfg job` for the keys of this config") from None
    except OmegaConfBaseException as err:  # a known key holding a value of the wrong type
        key = getattr(err, "full_key", None) or "?"
        raise AdvbenchError(f"{key}: {str(err).splitlines()[0][:200]}") from None


def _numbers(schema, prefix: str = ""):
    """(key, int or float, whether null is allowed) of every number field of a schema dataclass, nested ones
    included."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind, args = hints[f.name], typing.get_args(hints[f.name])
        optional = type(None) in args
        if optional:
            kind = next(a for a in args if a is not type(None))
        if dataclasses.is_dataclass(kind):
            yield from _numbers(kind, f"{prefix}{f.name}.")
        elif kind in (int, float):
            yield f"{prefix}{f.name}", kind, optional


NUMBERS = tuple(_numbers(Config))
ATTACK_NUMBERS = tuple(_numbers(AttackConf))


def _shown(value) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _attack_prefixes(cfg) -> list:
    attacks = OmegaConf.select(cfg, "eval.attacks")
    named = [f"eval.attacks.{name}" for name in attacks] if isinstance(attacks, DictConfig) else []
    return ["attack", "val.attack", *named]


def _check_numbers(cfg) -> None:
    """Every number the schema has is a number of its type (a stored config is not typed by Hydra), finite (a nan
    fails every comparison, so no range check would see it), and in its range."""
    typed = [*NUMBERS, *((f"{prefix}.{key}", kind, optional) for prefix in _attack_prefixes(cfg)[2:]
                         for key, kind, optional in ATTACK_NUMBERS)]
    for key, kind, optional in typed:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or (value is None and optional):
            continue
        if not is_number(value, kind):
            accepted = "an integer within 64 bits" if kind is int else "a finite number"
            raise AdvbenchError(f"{key}={_shown(value)}: expected {accepted}{' or null' if optional else ''}")
    ranges = [*_RANGES.items(), *((f"{prefix}.{key}", rule) for prefix in _attack_prefixes(cfg)
                                  for key, rule in _ATTACK_RANGES.items())]
    for key, (ok, accepted) in ranges:
        value = OmegaConf.select(cfg, key)
        if value is not None and not ok(value):
            raise AdvbenchError(f"{key}={_shown(value)}: expected {accepted}")
    for key in ("dataset.mean", "dataset.std"):
        values = OmegaConf.select(cfg, key)
        if not isinstance(values, (ListConfig, list)) or not all(
                is_number(v, float) and (key == "dataset.mean" or v > 0) for v in values):
            accepted = "finite numbers" if key == "dataset.mean" else "positive numbers"
            shown = _shown(list(values) if isinstance(values, ListConfig) else values)
            raise AdvbenchError(f"{key}={shown}: expected a list of {accepted}, one per channel")


def model_tasks_of(model_cfg) -> tuple:
    """The task keys a model config builds a model for, as the tasks declare its option; () for a model advbench
    does not ship (model=module builds the user's own)."""
    by_option = model_tasks()
    return tuple(key for option in model_options(model_cfg) for key in by_option.get(option, ()))


def model_options(model_cfg) -> list:
    """The options of conf/model/ that build what ``model_cfg`` builds (its ``_target_``, an old one's as today's)."""
    target = str(OmegaConf.select(model_cfg, "_target_"))
    target = LEGACY_TARGETS.get(target, target)
    return [option for option, shipped in shipped_targets("model").items() if shipped == target]


def _check_model_fits(cfg, task: str) -> None:
    """The model solves the task the data set poses: a detector given classification data would fail deep in the
    evaluation (or score nothing) after the data and model were built."""
    needs = model_tasks_of(cfg.model)
    if not needs or task in needs:
        return
    options = model_options(cfg.model)  # the option as the user writes it, where one option builds it
    name = options[0] if len(options) == 1 else str(cfg.model._target_).rsplit(".", 1)[-1]
    whose = " (the checkpoint's)" if cfg.job != "train" and cfg.checkpoint else ""
    fitting = ", ".join(n for n, (_, t) in sources().items() if t in needs)
    given, wanted = task_class(task), " or ".join(task_class(k).name for k in needs)
    raise AdvbenchError(f"model={name}{whose} does not take {given.name} data (dataset={cfg.dataset.name}): it is "
                        f"a {wanted} model and needs dataset={fitting}; {given.name} takes model="
                        f"{', '.join(given.models)}")


def _attack_of_another_task(task: str) -> AdvbenchError | None:
    """Where the attack option chosen serves other tasks only, the error that says so by its name
    (attack=tog_vanishing on classification data); None otherwise, or outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    from advbench import options
    choice = HydraConfig.get().runtime.choices.get("attack") if HydraConfig.initialized() else None
    served = options.elsewhere("attack", choice, task)
    if not served:
        return None
    given = task_class(task).name
    return AdvbenchError(f"attack={choice} is an attack of {' or '.join(task_class(k).name for k in served)}, "
                         f"not of {given}: {given} takes attack={', '.join(options.takes(task, 'attack'))}")


@dataclasses.dataclass
class Checked:
    """The objects a config was checked by building, before any data was read: the run uses these very ones."""

    task: object  # configured, not yet bound to the data set's classes (Task.bind)
    mode: object
    attack: object  # the training attack (None for eval and saliency, or attack=none)
    val_attack: object
    plan: EvalPlan


def _check_registered(cfg) -> None:
    """Names the registries define, each key named: attack kinds and norms, training modes."""
    names = {"name": ("none", *KINDS), "norm": tuple(THREATS)}
    for prefix in _attack_prefixes(cfg):
        for field_, known in names.items():
            value = OmegaConf.select(cfg, f"{prefix}.{field_}")
            if value is not None and str(value) not in known:
                raise AdvbenchError(f"{prefix}.{field_}={value}: expected one of {', '.join(known)}")
    if str(cfg.training.name) not in MODES:
        raise AdvbenchError(f"training.name={cfg.training.name}: expected one of {', '.join(MODES)}")


def _check_saliency(cfg, task) -> None:
    """job=saliency: the task draws maps (the registry's tasks say which do), Grad-CAM only of input models."""
    if not task.draws_saliency:
        drawing = sorted(cls.name for cls in tasks().values() if cls.draws_saliency)
        raise AdvbenchError(f"job=saliency draws {', '.join(drawing) or 'no'} models; dataset={cfg.dataset.name} "
                            f"poses {task.name}, which has no saliency maps")
    if str(getattr(cfg.saliency.method, "value", cfg.saliency.method)) == "gradcam" and task.perturbs != "input":
        raise AdvbenchError(f"saliency.method=gradcam maps the feature maps of image models; dataset="
                            f"{cfg.dataset.name} poses {task.name}, whose attacks move {task.perturbs}s: use "
                            "saliency.method=gradient")


def check_config(cfg) -> Checked:
    """Everything the schema cannot check, before any work: numbers and their ranges, eps, registered names, the
    model's task, trackers, and every attack at every eps fitting the data set's task. Returns the objects it
    built."""
    parse_eps(cfg.eps)
    _check_numbers(cfg)
    _check_registered(cfg)
    task_name = task_of(cfg.dataset)
    _check_model_fits(cfg, task_name)
    check_model_config(cfg.model)
    task = task_class(task_name).configured(cfg.eval)
    mode = build_mode(cfg.training, task)
    attack = val_attack = None
    if cfg.job == "train":
        try:
            attack = build_attack(cfg.attack, cfg.eps, task)
        except AdvbenchError as err:
            raise _attack_of_another_task(task_name) or err from None
        mode.check(attack)
        val_attack = validation_attack(task, cfg.val.attack, cfg.attack, cfg.eps)
    plan = EvalPlan(task, dict(cfg.eval.attacks), cfg.attack, cfg.eps, cfg.eval.n_examples, cfg.eval.eps_list,
                    cfg.eval.save_examples, cfg.eval.sanity, cfg.eval.cascade, cfg.seed)
    plan.check()
    if cfg.job == "saliency":
        _check_saliency(cfg, task)
        if not plan.attacks():
            raise AdvbenchError("job=saliency maps the gradient of the first of eval.attacks, and eval.attacks is "
                                "empty: give one, e.g. eval=pgd20")
    check_trackers(list(cfg.logger.trackers), cfg.logger)
    return Checked(task, mode, attack, val_attack, plan)
