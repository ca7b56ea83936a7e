"""Experiment trackers (the ``logger`` config group): csv, tensorboard, mlflow, wandb, several at once.

Each gets the resolved config as hyperparameters when the run starts, each epoch's metrics as it ends (step =
epoch), and the final metrics and files (figures, results.json, summary.md) when the run finishes. Each tracker's
run ids are kept in <run>/trackers.json, so that a resume continues the same tracker runs. Built on the trackers'
own packages, imported only when chosen.
"""
import json
import logging
from pathlib import Path

from advbench.errors import AdvbenchError
from advbench.runtime.outputs import write_json
from advbench.runtime.trackers.common import require
from advbench.runtime.trackers.csv import CSV
from advbench.runtime.trackers.mlflow import MLflow, check_mlflow_uri
from advbench.runtime.trackers.tensorboard import TensorBoard
from advbench.runtime.trackers.wandb import WANDB_MODES, WandB

log = logging.getLogger(__name__)
TRACKERS = {"csv": CSV, "tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}
IDS = "trackers.json"  # in the run directory: {tracker: its run's ids}, read back by a resume
__all__ = ["Trackers", "check_trackers", "check_mlflow_uri", "TRACKERS", "IDS"]


def check_trackers(names, settings) -> None:
    """The logger group's settings, before any work: tracker names, their packages, where they write."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise AdvbenchError(f"logger.trackers: {', '.join(map(str, unknown))} unknown; expected "
                            f"{', '.join(TRACKERS)}")
    if ("mlflow" in names or "wandb" in names) and not str(settings.experiment).strip():
        raise AdvbenchError("logger.experiment is empty: expected the name of the MLflow experiment or wandb "
                            "project, e.g. advbench")
    if "mlflow" in names:
        require("mlflow", "mlflow", "mlflow")
        check_mlflow_uri(str(settings.mlflow_uri))
    if "wandb" in names:
        if settings.wandb_mode not in WANDB_MODES:
            raise AdvbenchError(f"logger.wandb_mode={settings.wandb_mode}: expected {', '.join(WANDB_MODES)}")
        require("wandb", "wandb", "wandb")
    if "tensorboard" in names:
        require("torch.utils.tensorboard", "tensorboard", "tensorboard")


def stored_ids(out: Path) -> dict:
    """The tracker run ids an earlier run wrote into ``out``; none if it wrote none (or they are unreadable)."""
    try:
        ids = json.loads((out / IDS).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("%s unreadable (%s): the trackers start new runs", out / IDS, type(err).__name__)
        return {}
    return ids if isinstance(ids, dict) else {}


class Trackers:
    """The chosen trackers, called together; none chosen: every call does nothing. ``resumed``: the epoch a
    resumed run continues after (its trackers reopen the runs <run>/trackers.json names), None for a new run."""

    def __init__(self, names, out: Path, settings, resumed: int | None = None):
        unknown = [n for n in names if n not in TRACKERS]
        if unknown:
            raise AdvbenchError(f"logger.trackers: {', '.join(unknown)} unknown; expected {', '.join(TRACKERS)}")
        self.out, self.all, self.closed = out, [], False
        stored = stored_ids(out) if resumed else {}
        try:
            for name in names:
                self.all.append(TRACKERS[name](out, settings, stored.get(name), resumed))
            ids = {name: tracker.ids() for name, tracker in zip(names, self.all)}
            if any(ids.values()):
                # A resume's trackers that this command did not choose keep their entries: a later resume may.
                write_json(out / IDS, stored | {k: v for k, v in ids.items() if v})
        except BaseException as err:
            self.close(err)
            raise

    def hyperparams(self, config: dict) -> None:
        """The resolved config, when the run starts."""
        for tracker in self.all:
            tracker.hyperparams(config)

    def metrics(self, row: dict, step: int) -> None:
        """One epoch's metrics.jsonl row."""
        for tracker in self.all:
            tracker.metrics(row, step)

    def results(self, results: dict) -> None:
        """The final results and the run's files."""
        for tracker in self.all:
            tracker.results(results, self.out)

    def close(self, failed: BaseException | None = None) -> None:
        """End every tracker's run, marked finished, or interrupted or failed by ``failed``; once: later calls do
        nothing. One failing to close does not keep the others open."""
        if self.closed:
            return
        self.closed = True
        for tracker in self.all:
            try:
                tracker.close(failed)
            except Exception as err:  # a tracker's own shutdown problem must not hide the run's outcome
                log.warning("closing %s: %s", type(tracker).__name__, err)
