"""The tensorboard tracker: event files in <run>/tensorboard, the HParams view of the run written into them."""
from pathlib import Path

from advbench.runtime.trackers.common import epoch_metrics, figures, final_metrics, group, require, scalars

DIR = "tensorboard"


class TensorBoard:
    """torch.utils.tensorboard's SummaryWriter in <run>/tensorboard: scalars per epoch, the config as text, and at
    the end the test metrics, the figures and the HParams plugin's summaries (hyperparameters with the final
    metrics), all in this one directory: the HParams view lists the run once, under its own name."""

    def __init__(self, out: Path, settings, previous: dict | None = None, resumed: int | None = None):
        writers = require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        # A resume writes a new event file in the same directory; purge_step hides what the interrupted run logged
        # after the resume point, so that each epoch shows once.
        self.writer = writers.SummaryWriter(str(out / DIR), purge_step=resumed + 1 if resumed else None)
        self.step, self.params, self.tags = resumed or 0, {}, set()
        self.continued = bool(resumed and previous)  # the interrupted run wrote into this directory too

    def ids(self) -> dict:
        return {"log_dir": DIR}

    def hyperparams(self, config: dict) -> None:
        self.params = scalars(config)
        if not self.continued:  # the interrupted run wrote it, at step 0, which the purge keeps
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in self.params.items()))

    def metrics(self, row: dict, step: int) -> None:
        self.step = step
        for key, value in epoch_metrics(row).items():
            self.writer.add_scalar(group(key), value, step)
            self.tags.add(group(key))
        self.writer.flush()

    def results(self, results: dict, out: Path) -> None:
        import numpy as np
        from PIL import Image
        from torch.utils.tensorboard.summary import hparams
        final = {f"test/{k}": v for k, v in final_metrics(results).items()}
        shown = [*final, *sorted(t for t in self.tags if t.startswith("val/"))]
        # What add_hparams writes, but into this run's directory rather than a new one beside it: the HParams view
        # reads each metric's last value from this run's scalars of that tag, so the metric_dict only names them.
        for summary in hparams(self.params, dict.fromkeys(shown, 0.0)):
            self.writer.file_writer.add_summary(summary, self.step)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, self.step)
        for path in figures(out):
            self.writer.add_image(path.stem, np.asarray(Image.open(path).convert("RGB")), self.step,
                                  dataformats="HWC")

    def close(self, failed: BaseException | None = None) -> None:
        self.writer.close()
