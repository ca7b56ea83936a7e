"""``run(cfg)``: validate the config, train (or load a checkpoint), evaluate on the test split, write the files."""
import copy
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advbench import distributed
from advbench.checkpoint import build_model, load_checkpoint, save_checkpoint
from advbench.config import AttackConf
from advbench.rundir import labels
from advbench.checks import check_config, check_keys, check_resume_overrides, check_stored_targets
from advbench.data import load_data
from advbench.eps import parse_eps
from advbench.errors import AdvbenchError
from advbench.robust_eval import evaluate
from advbench.final_eval import eval_attacks, final_evaluation
from advbench.fit import fit
from advbench.outputs import versions, write_json
from advbench.saliency import write_saliency, write_text_saliency

log = logging.getLogger(__name__)


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


def checkpoint_config(cfg, state: dict, task: str = "eval", overrides: bool = True):
    """The checkpoint's config, with what this command line overrides (eval settings, eps, device...) on top."""
    merged = OmegaConf.create(state["config"])
    fill_missing(merged, cfg)
    overridden = {o.lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task} if overrides else set()
    for key in overridden - {"task", "checkpoint"}:
        if not key.startswith("hydra"):
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    merged.task, merged.checkpoint, merged.resume = task, cfg.checkpoint, cfg.resume
    merged.stop_after_epoch = cfg.stop_after_epoch  # an interruption is not part of the experiment
    OmegaConf.set_struct(merged, True)
    return merged


def evaluate_best(model, test, cfg, device, out: Path, training: dict) -> dict:
    """Test accuracy of best.pt (the epoch with the best robust validation accuracy), beside the final model's."""
    if training["best_epoch"] == training["epochs_run"] and not (training["guard"] or {}).get("fired"):
        return {"epoch": training["best_epoch"], "same_as_final": True}
    best = copy.deepcopy(model)
    best.load_state_dict(torch.load(out / "best.pt", weights_only=True)["state_dict"])
    torch.manual_seed(cfg.seed)
    x, y = (t[:cfg.eval.n_examples] for t in test)
    summary = evaluate(best, x, y, eval_attacks(cfg, cfg.eps), device, cfg.amp, cfg.eval.batch_size,
                       cfg.eval.cascade)
    return {"epoch": training["best_epoch"], "same_as_final": False, **summary}


def run(cfg, out: Path | None = None, on_start=lambda: None) -> float | None:
    """Train (or, with task=eval, load) and evaluate as ``cfg`` says, writing into ``out`` (default: Hydra's
    output directory); return the worst-case robust accuracy."""
    out = Path(out or HydraConfig.get().runtime.output_dir)
    check_keys(cfg)
    cfg = plain(cfg)
    choices = {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}
    state = resume = None
    if cfg.task in ("eval", "saliency"):
        state = load_checkpoint(cfg.checkpoint)
        check_stored_targets(state["config"], f"checkpoint={cfg.checkpoint}")
        cfg = checkpoint_config(cfg, state, task=cfg.task)
        choices = state.get("choices", {}) | {k: v for k, v in choices.items() if k == "eval"}
    elif cfg.resume and (out / "last.pt").exists():
        state = resume = load_checkpoint(str(out / "last.pt"))
        check_stored_targets(state["config"], f"resume={cfg.resume}: last.pt")
        stored = checkpoint_config(cfg, state, task="train", overrides=False)
        check_resume_overrides(stored, cfg, state["epoch"])
        cfg = checkpoint_config(cfg, state, task="train")
        choices = state.get("choices") or choices
    elif cfg.resume and cfg.resume != "auto":
        raise AdvbenchError(f"resume={cfg.resume}: no last.pt there to resume from (is it a training run?)")
    check_config(cfg)
    device = distributed.setup(cfg.device) or resolve_device(cfg.device)
    threads = threads_per_job(cfg.threads)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()

    data = load_data(cfg.dataset)
    model = build_model(cfg.model, data, cfg.dataset, state and state["state_dict"])
    if state and state.get("vocab") is not None and state["vocab"] != data.vocab:
        raise AdvbenchError(f"checkpoint: its vocabulary differs from dataset={cfg.dataset.name}'s training split "
                            "now: the token ids would not mean the same words")
    # channels_last lets oneDNN (CPU) and cuDNN pick their faster NHWC kernels: ~1.4x for small_cnn on CPU.
    model = model.to(device) if data.is_text else model.to(device, memory_format=torch.channels_last)
    log.info("%s: %d train / %d val / %d test examples; %s on %s", cfg.dataset.name, len(data.train[1]),
             len(data.val[1]), len(data.test[1]), cfg.model._target_.rsplit(".", 1)[-1], device)
    on_start()
    training = None
    if cfg.task == "train":
        training = fit(model, data, cfg, device, out, choices, resume)
        save_checkpoint(out / "model.pt", model, OmegaConf.to_container(cfg), choices=choices, vocab=data.vocab,
                        classes=data.classes)
    OmegaConf.save(cfg, out / "config_resolved.yaml")
    torch.manual_seed(cfg.seed)  # the evaluation's random starts don't depend on what training drew
    ran = labels(cfg.dataset.name, cfg.model._target_, cfg.training.name, cfg.attack.name, choices)
    if cfg.task == "saliency":
        attack = next(iter(eval_attacks(cfg, cfg.eps).values()))  # the run's first evaluation attack
        files, scales = (write_text_saliency(model, data.test, data.vocab, cfg, device, out) if data.is_text
                         else write_saliency(model, data.test, attack, cfg, device, out))
        write_json(out / "results.json", {"task": "saliency", "checkpoint": cfg.checkpoint, "files": files,
                                          "mean_abs_gradient": scales,
                                          "attack": asdict(attack), "choices": choices, "labels": ran,
                                          "versions": versions()})
        return None

    results = final_evaluation(model, data.test, cfg, device, out)
    if training:
        results["training"] = training | {"best": evaluate_best(model, data.test, cfg, device, out, training)}
    results |= {
        "task": cfg.task,
        "checkpoint": cfg.checkpoint,
        "eps": {"given": str(cfg.eps), "value": parse_eps(cfg.eps)},
        "seed": cfg.seed,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "world_size": distributed.world()[1],
        "wall_seconds": time.perf_counter() - start,
        "versions": versions(),
        "choices": choices,
        "labels": ran,  # what ran: the choices, or what an override put in their place
        "classes": data.classes,
    }
    write_json(out / "results.json", results)
    log.info("clean accuracy %.4f, robust accuracy %s on %d test examples (eps=%s); files in %s",
             results["clean_acc"], results["robust_acc_by_attack"], results["n_examples"], cfg.eps, out)
    return results["robust_acc"]
