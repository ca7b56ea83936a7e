"""The training loop: epochs of the training mode, validation, model selection, the overfitting guard."""
import json
import logging
import math
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advbench.attack_spec import build_attack
from advbench.checkpoint import save_checkpoint
from advbench.data import TensorLoader
from advbench.distributed import world, wrap
from advbench.errors import AdvbenchError, Interrupted
from advbench.robust_eval import evaluate
from advbench.final_eval import embedding_attack
from advbench.guard import OverfittingGuard
from advbench.outputs import write_jsonl
from advbench.schedules import make_scheduler
from advbench.text import is_text
from advbench.training import train_epoch

log = logging.getLogger(__name__)


def passes_over_data(cfg) -> int:
    """Epochs to run; free counts ``epochs`` in replays, so ceil(epochs / replays) passes over the data."""
    return math.ceil(cfg.epochs / cfg.training.replays) if cfg.training.name == "free" else cfg.epochs


def rng_state(loader_generator: torch.Generator) -> dict:
    """Every random state training draws from: torch's (CPU and CUDA) and the loader's shuffling."""
    state = {"torch": torch.get_rng_state(), "loader": loader_generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, loader_generator: torch.Generator) -> None:
    """Put back what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_metrics(path: Path, epochs: int) -> list:
    """The first ``epochs`` rows of a run's metrics.jsonl, or a one-line error if it lacks them."""
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines()][:epochs]
    except (OSError, ValueError) as err:
        raise AdvbenchError(f"resume: {path} is missing or unreadable ({type(err).__name__}); it must hold the "
                            f"{epochs} epochs last.pt has finished") from None
    if [r.get("epoch") for r in rows] != list(range(1, epochs + 1)):
        raise AdvbenchError(f"resume: {path} holds {len(rows)} of the {epochs} epochs last.pt has finished "
                            "(truncated?); the run cannot be resumed faithfully")
    return rows


def fit(model, data, cfg, device, out: Path, choices: dict, resume: dict | None = None) -> dict:
    """Train; validate each epoch; write metrics.jsonl, last.pt (everything a resume needs) and best.pt (by
    robust validation accuracy). With ``resume`` (a last.pt), continue after its epoch as if never stopped."""
    text = is_text(cfg.dataset)
    train_attack = build_attack(cfg.attack, cfg.eps, text)
    val_attack = embedding_attack(cfg, cfg.eps) if text else build_attack(cfg.val.attack, cfg.eps)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    generator = torch.Generator().manual_seed(cfg.seed)
    rank, world_size = world()
    loader = TensorLoader(*data.train, cfg.batch_size, shuffle=True, augment=cfg.dataset.augment,
                          generator=generator, rank=rank, world_size=world_size)
    trained = wrap(model, device)  # DDP under torchrun; ``model`` stays the bare module
    passes = passes_over_data(cfg)
    updates_per_batch = cfg.training.replays if cfg.training.name == "free" else 1
    scheduler = make_scheduler(optimizer, cfg.schedule, passes * len(loader) * updates_per_batch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    guard = (OverfittingGuard(cfg, data.train, train_attack.eps, train_attack.norm, device, out / "last.pt")
             if cfg.training.guard.enabled else None)
    val_x, val_y = (t[:cfg.val.n_examples] for t in data.val)
    config = OmegaConf.to_container(cfg)
    metrics, best, best_epoch, first = [], None, None, 1
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        restore_rng(resume["rng"], generator)
        first, best, best_epoch = resume["epoch"] + 1, tuple(resume["best"]), resume["best_epoch"]
        metrics = read_metrics(out / "metrics.jsonl", resume["epoch"])
        if guard:
            guard.restore(resume["guard"])
        log.info("resuming after epoch %d of %d", resume["epoch"], passes)
    for epoch in range(first, passes + 1):
        row = {"epoch": epoch, **train_epoch(trained, loader, optimizer, scheduler, scaler, train_attack, cfg,
                                             device, epoch, desc=f"epoch {epoch}/{passes}")}
        row["grad_computations_per_example"] = epoch * updates_per_batch
        if len(val_y):  # model selection and monitoring never look at the test split
            val = evaluate(model, val_x, val_y, {"val": val_attack}, device, cfg.amp, cfg.eval.batch_size)
            row |= {"val_clean_acc": val["clean_acc"], "val_robust_acc": val["robust_acc"]}
        metrics.append(row)
        write_jsonl(out / "metrics.jsonl", metrics)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                   if isinstance(v, float)))
        score = (row.get("val_robust_acc", 0.0), row.get("val_clean_acc", 0.0))
        if best is None or score > best:
            best, best_epoch = score, epoch
            save_checkpoint(out / "best.pt", model, config, epoch=epoch)
        collapsed = guard is not None and guard.check(model, optimizer, epoch)
        # Saved last, so that a resume continues from exactly this point, random states included.
        save_checkpoint(out / "last.pt", model, config, epoch=epoch, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=rng_state(generator),
                        best=list(best), best_epoch=best_epoch, guard=guard.state() if guard else None,
                        choices=choices)
        if collapsed:
            break
        if epoch == cfg.stop_after_epoch and epoch < passes:
            raise Interrupted(f"stop_after_epoch={epoch}")
    return {"epochs_run": len(metrics), "best_epoch": best_epoch,
            "guard": guard.report() if guard else None}

