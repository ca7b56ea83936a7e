"""The training loop: epochs of the training mode, validation, model selection, the overfitting guard."""
import logging
import math
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advbench.attack_spec import build_attack
from advbench.checkpoint import save_checkpoint
from advbench.data import TensorLoader
from advbench.evaluate import evaluate
from advbench.guard import OverfittingGuard
from advbench.outputs import write_jsonl
from advbench.schedules import make_scheduler
from advbench.training import train_epoch

log = logging.getLogger(__name__)


def passes_over_data(cfg) -> int:
    """Epochs to run; free counts ``epochs`` in replays, so ceil(epochs / replays) passes over the data."""
    return math.ceil(cfg.epochs / cfg.training.replays) if cfg.training.name == "free" else cfg.epochs


def fit(model, data, cfg, device, out: Path) -> dict:
    """Train; validate each epoch; write metrics.jsonl, last.pt and best.pt (by robust validation accuracy)."""
    train_attack = build_attack(cfg.attack, cfg.eps)
    val_attack = build_attack(cfg.val.attack, cfg.eps)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    loader = TensorLoader(*data.train, cfg.batch_size, shuffle=True, augment=cfg.dataset.augment,
                          generator=torch.Generator().manual_seed(cfg.seed))
    passes = passes_over_data(cfg)
    updates_per_batch = cfg.training.replays if cfg.training.name == "free" else 1
    scheduler = make_scheduler(optimizer, cfg.schedule, passes * len(loader) * updates_per_batch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    guard = (OverfittingGuard(cfg, data.train, train_attack.eps, train_attack.norm, device)
             if cfg.training.guard.enabled else None)
    val_x, val_y = (t[:cfg.val.n_examples] for t in data.val)
    config = OmegaConf.to_container(cfg)
    metrics, best, best_epoch = [], None, None
    for epoch in range(1, passes + 1):
        row = {"epoch": epoch, **train_epoch(model, loader, optimizer, scheduler, scaler, train_attack, cfg,
                                             device, epoch, desc=f"epoch {epoch}/{passes}")}
        row["grad_computations_per_example"] = epoch * updates_per_batch
        if len(val_y):  # model selection and monitoring never look at the test split
            val = evaluate(model, val_x, val_y, {"val": val_attack}, device, cfg.amp, cfg.eval.batch_size)
            row |= {"val_clean_acc": val["clean_acc"], "val_robust_acc": val["robust_acc"]}
        metrics.append(row)
        write_jsonl(out / "metrics.jsonl", metrics)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                   if isinstance(v, float)))
        save_checkpoint(out / "last.pt", model, config, epoch=epoch, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict())
        score = (row.get("val_robust_acc", 0.0), row.get("val_clean_acc", 0.0))
        if best is None or score > best:
            best, best_epoch = score, epoch
            save_checkpoint(out / "best.pt", model, config, epoch=epoch)
        if guard and guard.check(model, optimizer, epoch):
            break
    return {"epochs_run": len(metrics), "best_epoch": best_epoch,
            "guard": guard.report() if guard else None}
