"""The training loop: epochs of the training mode, validation, model selection, the overfitting guard."""
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from advbench.data.loaders import TensorLoader
from advbench.data.streams import Stream, StreamLoader
from advbench.errors import AdvbenchError, Interrupted
from advbench.runtime import readable
from advbench.runtime.checkpoint import save_checkpoint
from advbench.runtime.distributed import world, wrap
from advbench.runtime.outputs import write_jsonl
from advbench.training.guard import OverfittingGuard
from advbench.training.loop import Plan, train_epoch
from advbench.training.schedules import make_scheduler

log = logging.getLogger(__name__)
# Adversarial-only modes never see clean outputs; their training clean accuracy is measured at the end of each
# epoch on this many training examples instead of with an extra forward pass per batch.
CLEAN_SAMPLE = 1000


@dataclass
class Recipe:
    """Everything a training run does, built from the config at the top."""

    mode: object  # the training mode (training/modes.py)
    attack: object  # the training attack, or None
    val_attack: object  # the attack of each epoch's validation
    optimizer: Callable  # params -> optimizer
    schedule: str
    epochs: int
    batch_size: int
    seed: int
    plan: Plan
    augment: bool = False
    guard: object = None  # training.guard settings when enabled, else None
    val_n_examples: int | None = None
    stop_after_epoch: int | None = None


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


def fit(model, data, task, recipe: Recipe, evaluator, out: Path, config: dict, choices: dict,
        resume: dict | None = None, trackers=None) -> dict:
    """Train; validate each epoch; write metrics.jsonl, last.pt (everything a resume needs) and best.pt (by
    robust validation score), and hand each epoch's row to the experiment ``trackers``. With ``resume`` (a
    last.pt), continue after its epoch as if never stopped."""
    from advbench.evaluation.plots import plot_curves  # matplotlib (0.5 s): here, not paid by a refused command
    mode, clean_key, robust_key = recipe.mode, *task.metrics
    optimizer = recipe.optimizer(model.parameters())
    generator = torch.Generator().manual_seed(recipe.seed)
    rank, world_size = world()
    if isinstance(data.train, Stream):
        loader = StreamLoader(data.train, recipe.batch_size, generator, evaluator.device, rank, world_size,
                              augment=bool(recipe.augment))
    else:
        loader = TensorLoader(*data.train, recipe.batch_size, shuffle=True, generator=generator, rank=rank,
                              world_size=world_size, index=task.index, trim=task.trim, device=evaluator.device,
                              augment=task.augment if recipe.augment else None)
    # The attack and the update run through the compiled graphs (the evaluator's wrapper, whose graphs validation
    # reuses; full batches and their clean + adversarial pairs compile exactly); ``model`` stays the bare module
    # checkpoints save.
    runner = evaluator.compiled(model, recipe.batch_size, 2 * recipe.batch_size) if recipe.plan.compile else model
    trained = wrap(runner, evaluator.device)  # DDP under torchrun
    passes = mode.passes(recipe.epochs)
    scheduler = make_scheduler(optimizer, recipe.schedule, passes * len(loader) * mode.updates_per_batch)
    scaler = torch.amp.GradScaler(evaluator.device.type, enabled=recipe.plan.amp == "fp16")
    guard = (OverfittingGuard(recipe.guard, data.train, recipe.attack, evaluator, out / "last.pt")
             if recipe.guard is not None else None)
    val_x, val_y = (t[:recipe.val_n_examples] for t in data.val)
    clean_sample = tuple(t[:CLEAN_SAMPLE] for t in data.train)
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
        row = {"epoch": epoch, **train_epoch(trained, loader, mode, task, recipe.attack, optimizer, scheduler,
                                             scaler, recipe.plan, evaluator.device, epoch,
                                             desc=f"epoch {epoch}/{passes}", clean_sample=clean_sample)}
        row["grad_computations_per_example"] += metrics[-1].get("grad_computations_per_example", 0) if metrics else 0
        if len(val_x):  # model selection and monitoring never look at the test split
            val = evaluator.evaluate(model, val_x, val_y, {"val": recipe.val_attack})
            row |= {f"val_{clean_key}": val[clean_key], f"val_{robust_key}": val[robust_key]}
        metrics.append(row)
        write_jsonl(out / "metrics.jsonl", metrics)
        plot_curves(metrics, task.metrics, out / "curves.png")
        if trackers:
            trackers.metrics(row, epoch)
        log.info("epoch %d: %s", epoch, readable.row({k: v for k, v in row.items() if k != "epoch"}))
        score = (row.get(f"val_{robust_key}", 0.0), row.get(f"val_{clean_key}", 0.0))
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
        if epoch == recipe.stop_after_epoch and epoch < passes:
            raise Interrupted(f"stop_after_epoch={epoch}")
    return {"epochs_run": len(metrics), "best_epoch": best_epoch,
            "best_val": {"robust": best[0], "clean": best[1]} if len(val_x) else None,
            "guard": guard.report() if guard else None}
