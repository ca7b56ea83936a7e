"""The wandb tracker: a Weights & Biases run (offline by default), continued by a resume under the same id."""
from pathlib import Path

from advbench.runtime.trackers.common import epoch_metrics, figures, final_metrics, group, outcome, require

WANDB_MODES = ("offline", "online", "disabled", "shared")


class WandB:
    """A Weights & Biases run (offline by default: ``wandb sync`` uploads it later): the config as wandb.config,
    metrics per epoch (step = epoch), the test metrics in its summary, the figures as images."""

    def __init__(self, out: Path, settings, previous: dict | None = None, resumed: int | None = None):
        self.wandb = wandb = require("wandb", "wandb", "wandb")
        again = {"id": previous["id"], "resume": "allow"} if resumed and (previous or {}).get("id") else {}
        self.run = wandb.init(project=settings.experiment, dir=str(out), mode=settings.wandb_mode,
                              name=f"{out.parent.name}/{out.name}", reinit="finish_previous", **again)
        self.step = resumed or 0

    def ids(self) -> dict:
        return {"id": self.run.id, "project": self.run.project}

    def hyperparams(self, config: dict) -> None:
        # Nested, as wandb shows it (attack.steps); a resume may change what RESUMABLE allows (epochs, eval.*).
        self.run.config.update(config, allow_val_change=True)

    def metrics(self, row: dict, step: int) -> None:
        self.step = step
        self.run.log({group(k): v for k, v in epoch_metrics(row).items()}, step=step)

    def results(self, results: dict, out: Path) -> None:
        self.run.summary.update({f"test/{k}": v for k, v in final_metrics(results).items()})
        images = {f"figures/{p.stem}": self.wandb.Image(str(p)) for p in figures(out)}
        if images:
            self.run.log(images, step=self.step)

    def close(self, failed: BaseException | None = None) -> None:
        self.run.finish(exit_code=0 if outcome(failed) == "finished" else 1)
