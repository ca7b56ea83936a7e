"""``run(cfg)``: validate the config, train, validate each epoch, evaluate on the test split, write the files."""
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advbench.attack_spec import build_attack
from advbench.data import TensorLoader, load_data
from advbench.eps import parse_eps
from advbench.errors import AdvbenchError
from advbench.evaluate import evaluate
from advbench.outputs import save_checkpoint, versions, write_json, write_jsonl
from advbench.training import make_scheduler, train_epoch

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AdvbenchError("device=cuda but no CUDA device is available: use device=auto or device=cpu")
    return torch.device(name)


def build_attacks(cfg):
    """Every attack of the run, built (and so validated) before any work: training, validation, evaluation."""
    train_attack = build_attack(cfg.attack, cfg.eps)
    if cfg.training.name != "standard" and train_attack is None:
        raise AdvbenchError(f"training={cfg.training.name} needs an attack: attack=none given; "
                            "use attack=fgsm, fgsm_rs, pgd or fgm")
    val_attack = build_attack(cfg.val.attack, cfg.eps)
    eval_attacks = {name: build_attack(spec, cfg.eps) for name, spec in cfg.eval.attacks.items()}
    return train_attack, val_attack, {k: a for k, a in eval_attacks.items() if a is not None}


def check_sizes(cfg) -> None:
    """Counts the schema types as int but cannot bound."""
    for key in ("epochs", "batch_size", "eval.batch_size"):
        if OmegaConf.select(cfg, key) < 1:
            raise AdvbenchError(f"{key}={OmegaConf.select(cfg, key)} must be a positive integer")
    for key in ("eval.n_examples", "val.n_examples", "dataset.n_train"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise AdvbenchError(f"{key}={value} must be a positive integer or null (all)")


def plain(cfg):
    """The resolved config with enums as strings, still refusing unknown keys."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def run(cfg) -> float | None:
    """Train and evaluate as ``cfg`` says; return the headline metric, the worst-case robust accuracy."""
    out = Path(HydraConfig.get().runtime.output_dir)
    cfg = plain(cfg)
    eps = parse_eps(cfg.eps)
    check_sizes(cfg)
    train_attack, val_attack, eval_attacks = build_attacks(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()

    data = load_data(cfg.dataset)
    model = instantiate(cfg.model, in_shape=data.shape, n_classes=data.n_classes,
                        mean=list(cfg.dataset.mean), std=list(cfg.dataset.std))
    # channels_last lets oneDNN (CPU) and cuDNN pick their faster NHWC kernels: ~1.4x for small_cnn on CPU.
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    train = TensorLoader(*data.train, cfg.batch_size, shuffle=True, augment=cfg.dataset.augment,
                         generator=torch.Generator().manual_seed(cfg.seed))
    scheduler = make_scheduler(optimizer, cfg.schedule, cfg.epochs * len(train))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    val_x, val_y = (t[:cfg.val.n_examples] for t in data.val)
    log.info("%s: %d train / %d val / %d test examples; %s on %s", cfg.dataset.name, len(data.train[1]),
             len(val_y), len(data.test[1]), cfg.model._target_.rsplit(".", 1)[-1], device)

    metrics = []
    for epoch in range(1, cfg.epochs + 1):
        row = {"epoch": epoch, **train_epoch(model, train, optimizer, scheduler, scaler, train_attack, cfg,
                                             device, desc=f"epoch {epoch}/{cfg.epochs}")}
        if len(val_y):
            val = evaluate(model, val_x, val_y, {"val": val_attack}, device, cfg.amp, cfg.eval.batch_size)
            row |= {"val_clean_acc": val["clean_acc"], "val_robust_acc": val["robust_acc"]}
        metrics.append(row)
        write_jsonl(out / "metrics.jsonl", metrics)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                   if isinstance(v, float)))

    save_checkpoint(out / "model.pt", model, OmegaConf.to_container(cfg))
    test_x, test_y = (t[:cfg.eval.n_examples] for t in data.test)
    results = evaluate(model, test_x, test_y, eval_attacks, device, cfg.amp, cfg.eval.batch_size)
    results |= {
        "eps": {"given": str(cfg.eps), "value": eps},
        "seed": cfg.seed,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "wall_seconds": time.perf_counter() - start,
        "versions": versions(),
        "choices": {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")},
        "attacks": {name: asdict(attack) for name, attack in eval_attacks.items()},
    }
    write_json(out / "results.json", results)
    log.info("clean accuracy %.4f, robust accuracy %s on %d test examples (eps=%s); files in %s",
             results["clean_acc"], results["robust_acc_by_attack"], results["n_examples"], cfg.eps, out)
    return results["robust_acc"]
