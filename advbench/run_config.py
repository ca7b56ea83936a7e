"""The run's config: the command line's, resolved and validated, or a checkpoint's with the command line on top;
and the machine it runs on (device, threads)."""
import os

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advbench.config import AttackConf
from advbench.errors import AdvbenchError

LEGACY_TARGETS = {  # what older advbench versions stored -> where it lives now
    "advbench.text_models.TextCNN": "advbench.models.TextCNN",
    "advbench.text_models.TransformerClassifier": "advbench.models.TransformerClassifier",
}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AdvbenchError("device=cuda but no CUDA device is available: use device=auto or device=cpu")
    return torch.device(name)


def threads_per_job(threads: int | None) -> int | None:
    """Torch CPU threads: ``threads`` if given; under the joblib launcher, the cores shared among its parallel
    jobs, so that they do not oversubscribe the machine; else torch's default."""
    launcher = HydraConfig.get().launcher
    if threads or "Joblib" not in str(launcher.get("_target_", "")):
        return threads
    cores = os.cpu_count() or 1
    n_jobs = launcher.n_jobs if launcher.n_jobs > 0 else max(1, cores + 1 + launcher.n_jobs)
    return max(1, cores // n_jobs)


def plain(cfg):
    """The resolved config with enums as strings, still refusing unknown keys."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    cfg.eval.attacks = {name: typed_attack(spec, f"eval.attacks.{name}") for name, spec in cfg.eval.attacks.items()}
    OmegaConf.set_struct(cfg, True)
    return cfg


def typed_attack(spec, key: str) -> dict:
    """An ``eval.attacks`` entry with every AttackConf key, validated (entries added on the command line are
    plain mappings)."""
    try:
        return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(AttackConf), spec), enum_to_str=True)
    except OmegaConfBaseException as err:
        raise AdvbenchError(f"{key}: {' '.join(str(err).split())[:200]}") from None


def fill_missing(target, defaults, wholesale=("model", "optimizer", "attacks")) -> None:
    """Add keys of ``defaults`` that ``target`` lacks (a checkpoint of an older advbench), recursively; the
    open-ended nodes in ``wholesale`` are never mixed from two sources."""
    for key, value in defaults.items():
        if key not in target:
            target[key] = value
        elif key not in wholesale and isinstance(value, DictConfig) and isinstance(target[key], DictConfig):
            fill_missing(target[key], value, wholesale)


def checkpoint_config(cfg, state: dict, job: str = "eval", overrides: bool = True):
    """The checkpoint's config, with what this command line overrides (eval settings, eps, device...) on top."""
    merged = OmegaConf.create(state["config"])
    merged.pop("task", None)  # an older advbench's name for ``job``, which this command line sets
    target = OmegaConf.select(merged, "model._target_")
    if target in LEGACY_TARGETS:
        merged.model._target_ = LEGACY_TARGETS[target]
    fill_missing(merged, cfg)
    overridden = {o.lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task} if overrides else set()
    for key in overridden - {"job", "checkpoint"}:
        if not key.startswith("hydra"):
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    merged.job, merged.checkpoint, merged.resume = job, cfg.checkpoint, cfg.resume
    merged.stop_after_epoch = cfg.stop_after_epoch  # an interruption is not part of the experiment
    OmegaConf.set_struct(merged, True)
    return merged


# What a resumed run may change: how it runs, how long, and how it is evaluated; never what it trains.
RESUMABLE = ("epochs", "device", "compile", "threads", "progress", "resume", "stop_after_epoch", "eval",
             "dataset.root", "dataset.download")


def command_line() -> dict:
    """key -> value text of this command line's overrides (``+``/``~`` prefixes dropped)."""
    pairs = (o.split("=", 1) for o in HydraConfig.get().overrides.task if "=" in o)
    return {key.lstrip("+~"): value for key, value in pairs}


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def changed_keys(stored, cfg, allowed: tuple) -> list:
    """The keys of this command line, other than ``allowed`` (and their sub-keys), that differ from ``stored``."""
    return sorted(key for key in command_line()
                  if not key.startswith("hydra") and not any(key == k or key.startswith(k + ".") for k in allowed)
                  and _plain(OmegaConf.select(stored, key)) != _plain(OmegaConf.select(cfg, key)))


def check_finished_overrides(stored, cfg, out) -> None:
    """A finished run resumed (a sweep's ``resume=auto``) is skipped; an override that would change it, its
    length or its evaluation included, is refused rather than silently ignored."""
    changed = changed_keys(stored, cfg, tuple(k for k in RESUMABLE if k not in ("epochs", "eval")))
    if changed:
        raise AdvbenchError(f"resume={cfg.resume}: {out} has finished; {', '.join(changed)} would change it: "
                            f"evaluate it again with job=eval checkpoint={out} (eval.*), or start a new run")


def check_resume_overrides(stored, cfg, done_epochs: int) -> None:
    """A resume continues the same experiment: refuse overrides that change it, naming the keys."""
    changed = changed_keys(stored, cfg, RESUMABLE)
    if changed:
        raise AdvbenchError(f"resume: {', '.join(sorted(changed))} would change the experiment being resumed; a "
                            f"resume may change only {', '.join(RESUMABLE)} (eval.*); start a new run instead")
    if cfg.epochs < done_epochs:
        raise AdvbenchError(f"epochs={cfg.epochs} is below the {done_epochs} epochs the resumed run has finished")
    if "epochs" in command_line() and cfg.epochs != stored.epochs and str(stored.schedule) != "constant":
        raise AdvbenchError(f"resume: epochs={cfg.epochs} differs from the run's {stored.epochs}, and "
                            f"schedule={stored.schedule} sets the learning rate by the share of the run done: the "
                            "epochs left would follow another schedule than those done, and no run of the recorded "
                            f"config would give its numbers; resume with epochs={stored.epochs} (only "
                            "schedule=constant lets a resume change epochs), or start a new run")
