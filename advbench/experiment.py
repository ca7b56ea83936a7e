"""``run(cfg)``: build every object of the run once, at the top, then one short function per task (train, eval,
saliency). Functions below take these objects, never the root config."""
import copy
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advbench.checks import check_config
from advbench.config_sources import load_config
from advbench.data import load_data, model_tokenizer
from advbench.eps import parse_eps
from advbench.errors import AdvbenchError
from advbench.evaluation import EvalPlan, Evaluator, final_evaluation, tidy
from advbench.evaluation.batch import auto_batch_size
from advbench.evaluation.gradcam import find_layer, wants_gradcam
from advbench.evaluation.summary import write_summary
from advbench.run_config import resolve_device, threads_per_job
from advbench.runtime import distributed, readable
from advbench.runtime.checkpoint import build_model, data_kwargs, save_checkpoint, with_whole_folders
from advbench.runtime.compiled import resolve_compile
from advbench.runtime.outputs import versions, write_json, write_yaml
from advbench.runtime.rundir import labels
from advbench.runtime.trackers import Trackers
from advbench.training import Plan, Recipe, fit

log = logging.getLogger(__name__)


@dataclass
class Run:
    """The objects a run works with, built once from its config."""

    cfg: object  # the resolved config: written to config_resolved.yaml and into checkpoints, never passed down
    out: Path
    device: torch.device
    data: object
    task: object
    model: torch.nn.Module
    evaluator: Evaluator
    plan: EvalPlan
    mode: object
    attack: object  # the training attack (None for eval and saliency)
    val_attack: object
    choices: dict
    labels: dict
    state: dict | None = None  # the checkpoint loaded (eval, saliency) or resumed (train)
    started: float = 0.0
    trackers: Trackers | None = None  # the logger group's experiment trackers


def prepare(cfg, out: Path, choices: dict, state: dict | None) -> Run:
    """Check the config by building the task, training mode, attacks and evaluation plan; then load the data,
    bind the task to it, and build the model and evaluator."""
    checked = check_config(cfg)
    device = distributed.setup(cfg.device) or resolve_device(cfg.device)
    threads = threads_per_job(cfg.threads)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    data = load_data(model_tokenizer(cfg.dataset, cfg.model))
    task = checked.task.bind(data)
    if state and state.get("torchscript") is not None:
        model = state["torchscript"]  # used as it is: it takes [0,1] inputs, normalizing inside if it needs to
    else:
        model = build_model(cfg.model, data, cfg.dataset, task, state and state["state_dict"])
    if state and state.get("vocab") is not None and state["vocab"] != data.vocab:
        raise AdvbenchError(f"checkpoint: its vocabulary differs from dataset={cfg.dataset.name}'s training split "
                            "now: the token ids would not mean the same words")
    # channels_last lets oneDNN (CPU) and cuDNN pick their faster NHWC kernels: ~1.4x for small_cnn on CPU.
    model = model.to(device, memory_format=torch.channels_last) if len(data.shape) == 3 else model.to(device)
    if cfg.job == "saliency" and wants_gradcam(cfg.saliency) and cfg.saliency.layer:
        find_layer(model, cfg.saliency.layer)  # a misspelt layer is bad input: refused before the run starts
    compiled = resolve_compile(cfg.compile, device, task.pads_batches)  # the one place the setting is read
    log.info("%s: %d train / %d val / %d test examples; %s on %s%s", cfg.dataset.name, len(data.train[0]),
             len(data.val[0]), len(data.test[0]), cfg.model._target_.rsplit(".", 1)[-1], device,
             ", compiled" if compiled else "")
    batch = (auto_batch_size(model, data.shape, device) if cfg.eval.batch_size == "auto" else cfg.eval.batch_size)
    evaluator = Evaluator(task, device, cfg.amp, batch, cfg.eval.cascade, cfg.progress, compiled)
    # Last: a tracker opens its run (an MLflow run, a wandb process) only once everything else was accepted.
    resumed = state.get("epoch") if state and cfg.job == "train" else None  # their runs continue the interrupted ones
    trackers = Trackers(list(cfg.logger.trackers) if distributed.is_main() else [], out, cfg.logger, resumed)
    run_labels = labels(cfg.dataset.name, cfg.model._target_, cfg.training.name, cfg.attack.name, choices,
                        cfg.model.get("name"), OmegaConf.select(cfg.model, "module._target_"))
    checked.plan.subject = f"{run_labels['model']} on {run_labels['dataset']}"  # what the figures' titles name
    return Run(cfg, out, device, data, task, model, evaluator, checked.plan, checked.mode, checked.attack,
               checked.val_attack, choices, run_labels, state, started, trackers)


def recipe(run: Run) -> Recipe:
    """The training recipe of the run's config."""
    cfg = run.cfg
    return Recipe(run.mode, run.attack, run.val_attack,
                  partial(instantiate(cfg.optimizer)), cfg.schedule, cfg.epochs, cfg.batch_size, cfg.seed,
                  Plan(cfg.amp, cfg.grad_clip, cfg.eps_warmup_epochs, cfg.progress, run.evaluator.compile),
                  cfg.dataset.augment,
                  cfg.training.guard if cfg.training.guard.enabled else None, cfg.val.n_examples,
                  cfg.stop_after_epoch)


def evaluate_best(run: Run, training: dict) -> dict:
    """Test numbers of best.pt (the epoch with the best robust validation score), beside the final model's."""
    if training["best_epoch"] == training["epochs_run"] and not (training["guard"] or {}).get("fired"):
        return {"epoch": training["best_epoch"], "same_as_final": True}
    best = copy.deepcopy(run.model)
    best.load_state_dict(torch.load(run.out / "best.pt", weights_only=True)["state_dict"])
    torch.manual_seed(run.cfg.seed)
    x, targets = (t[:run.plan.n_examples] for t in run.data.test)
    summary = run.evaluator.evaluate(best, x, targets, run.plan.attacks())
    return {"epoch": training["best_epoch"], "same_as_final": False, **summary}


def train_job(run: Run) -> dict:
    """Train, save model.pt, evaluate it (and best.pt) on the test split."""
    config = OmegaConf.to_container(run.cfg)
    training = fit(run.model, run.data, run.task, recipe(run), run.evaluator, run.out, config, run.choices,
                   resume=run.state, trackers=run.trackers)
    save_checkpoint(run.out / "model.pt", run.model, with_whole_folders(copy.deepcopy(config)), choices=run.choices,
                    vocab=run.data.vocab, classes=run.data.classes, data_kwargs=data_kwargs(run.data, run.cfg.dataset))
    results = eval_job(run)
    results["training"] = training | {"best": evaluate_best(run, training)}
    return results


def eval_job(run: Run) -> dict:
    """The final evaluation of the run's model on the test split."""
    write_yaml(run.out / "config_resolved.yaml", run.cfg)
    torch.manual_seed(run.cfg.seed)  # the evaluation's random starts don't depend on what training drew
    return final_evaluation(run.model, run.data.test, run.plan, run.evaluator, run.out)


def saliency_job(run: Run) -> dict:
    """Gradient maps of the checkpoint's model on the first test examples."""
    write_yaml(run.out / "config_resolved.yaml", run.cfg)
    torch.manual_seed(run.cfg.seed)
    attack = next(iter(run.plan.attacks().values()))  # the run's first evaluation attack
    files, scales = run.task.write_saliency(run.model, run.data.test, attack, run.mode, run.cfg.saliency,
                                            run.device, run.out)
    return {"files": files, "mean_abs_gradient": scales, "attack": attack.settings()}


JOBS = {"train": train_job, "eval": eval_job, "saliency": saliency_job}


def run(cfg, out: Path | None = None, on_start=lambda: None) -> float | None:
    """Train (or, with job=eval, load) and evaluate as ``cfg`` says, writing into ``out`` (default: Hydra's
    output directory); return the headline robust metric (for sweepers)."""
    out = Path(out or HydraConfig.get().runtime.output_dir)
    cfg, choices, state, _ = load_config(cfg, out)
    the_run = prepare(cfg, out, choices, state)
    failed = None
    try:
        on_start()
        the_run.trackers.hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        results = JOBS[cfg.job](the_run)
        if cfg.job == "saliency":
            write_json(out / "results.json", {"job": "saliency", "checkpoint": cfg.checkpoint, **results,
                                              "choices": choices, "labels": the_run.labels, "versions": versions()})
            return None
        headline = finish(the_run, results)
        the_run.trackers.results(results)
        return headline
    except BaseException as err:
        failed = err  # each tracker's run is marked interrupted (resumable) or failed
        raise
    finally:
        the_run.trackers.close(failed)


def finish(run: Run, results: dict) -> float | None:
    """Add what the run was to its results, write results.json, and return the headline robust metric."""
    cfg, device = run.cfg, run.device
    results |= {
        "job": cfg.job,
        "checkpoint": cfg.checkpoint,
        "eps": {"given": str(cfg.eps), "value": parse_eps(cfg.eps)},
        "seed": cfg.seed,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "world_size": distributed.world()[1],
        "wall_seconds": time.perf_counter() - run.started,
        "versions": versions(),
        "choices": run.choices,
        "labels": run.labels,  # what ran: the choices, or what an override put in their place
        "classes": run.data.classes,
        "metric_names": dict(zip(("clean", "robust"), run.task.metrics)),  # what the headline numbers are
        "task": run.task.key,  # the problem (tasks/registry.py key)
        # the preset asked for; what ran (and, where the task skipped the preset's attacks, which and why)
        "evaluation": {"preset": run.choices.get("eval"), "name": cfg.eval.name, "version": cfg.eval.version,
                       **run.plan.record()},
        "metric_definitions": run.task.metric_definitions(),  # how each reported number is computed
    }
    write_json(run.out / "results.json", results)
    write_summary(results, run.out / "summary.md")
    tidy.write(run.out / "results.csv", tidy.rows(results, tidy.settings(results, run.out)))
    clean_key, robust_key = run.task.metrics
    by_attack = ", ".join(f"{name} {readable.number(robust_key, v)}"
                          for name, v in results[f"{robust_key}_by_attack"].items())
    log.info("%s %s, %s %s (%s) on %d test examples (eps=%s); files in %s", clean_key,
             readable.number(clean_key, results[clean_key]), robust_key,
             readable.number(robust_key, results[robust_key]), by_attack, results["n_examples"], cfg.eps, run.out)
    return headline(results)


def headline(results: dict) -> float | None:
    """What main returns to a sweeper: for a training run its best epoch's robust validation metric (a search
    must never select on the test split; None without a validation split), for an evaluation the test one."""
    if results.get("job") == "train":
        best = (results.get("training") or {}).get("best_val")
        if best is None:
            log.warning("no validation split (dataset.val_size=0): no metric for a sweeper to optimize")
        return best and best["robust"]
    return results[results["metric_names"]["robust"]]
