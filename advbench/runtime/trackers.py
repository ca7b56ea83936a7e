"""Experiment trackers (the ``logger`` config group): csv, tensorboard, mlflow, wandb, several at once.

Each gets the resolved config as hyperparameters when the run starts, each epoch's metrics as it ends, and the
final results and files (figures, results.json, summary.md) when the run finishes. Built on the trackers' own
packages, imported only when chosen.
"""
import csv
import io
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from advbench.errors import AdvbenchError

log = logging.getLogger(__name__)
ARTIFACTS = ("*.png", "results.json", "summary.md", "metrics.jsonl")


def flat(tree, prefix: str = "") -> dict:
    """A nested dict as {"a.b.c": value}; lists become their text."""
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat(value, f"{name}.")
        else:
            out[name] = value
    return out


def numbers(tree) -> dict:
    """The finite numbers of a (nested) dict, flattened; booleans and None left out."""
    return {k: float(v) for k, v in flat(tree).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")}


def _require(module: str, tracker: str, package: str):
    """``module`` imported, or a one-line error naming the extra that installs ``package``."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AdvbenchError(f"logger={tracker} needs the {package} package: pip install "
                            f"'advbench[{tracker}]'") from None


def _group(key: str) -> str:
    """TensorBoard's and wandb's panel for a metrics.jsonl column: val/..., train/..."""
    for prefix in ("val_", "train_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"train/{key}"


class CSV:
    """csv/metrics.csv (one row per epoch, every column seen so far), csv/hparams.csv and csv/results.csv."""

    def __init__(self, out: Path, settings):
        self.dir, self.rows = out / "csv", []
        self.dir.mkdir(exist_ok=True)
        if (self.dir / "metrics.csv").exists():  # a resumed run: its earlier epochs stay
            with open(self.dir / "metrics.csv", newline="") as f:
                self.rows = list(csv.DictReader(f))

    def _write(self, name: str, rows: list) -> None:
        from advbench.runtime.outputs import atomic_write
        columns = list(dict.fromkeys(k for row in rows for k in row))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.dir / name, lambda f: f.write(text.getvalue().encode()))  # a full disk leaves no half file

    def hyperparams(self, config: dict) -> None:
        self._write("hparams.csv", [{"key": k, "value": v} for k, v in flat(config).items()])

    def metrics(self, row: dict, step: int) -> None:
        self.rows.append(row)
        self._write("metrics.csv", self.rows)

    def results(self, results: dict, out: Path) -> None:
        self._write("results.csv", [numbers(results)])

    def close(self) -> None:
        pass


class TensorBoard:
    """torch.utils.tensorboard's SummaryWriter in <run>/tensorboard: scalars, the config as text, the figures."""

    def __init__(self, out: Path, settings):
        writers = _require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        self.writer, self.step = writers.SummaryWriter(str(out / "tensorboard")), 0

    def hyperparams(self, config: dict) -> None:
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat(config).items()))

    def metrics(self, row: dict, step: int) -> None:
        self.step = step
        for key, value in numbers(row).items():
            self.writer.add_scalar(_group(key), value, step)
        self.writer.flush()

    def results(self, results: dict, out: Path) -> None:
        import numpy as np
        from PIL import Image
        for key, value in numbers(results).items():
            self.writer.add_scalar(f"test/{key}", value, self.step)
        for path in sorted(out.glob("*.png")):
            self.writer.add_image(path.stem, np.asarray(Image.open(path).convert("RGB")), self.step,
                                  dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


WANDB_MODES = ("offline", "online", "disabled", "shared")
_URI_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")  # MLflow's own


def _is_folder(uri: str) -> bool:
    """Whether logger.mlflow_uri names a local folder (a file store) rather than a tracking URI."""
    return "://" not in uri and not uri.startswith(("file:", "sqlite:"))


def _writable(path: Path, key: str, folder: bool) -> None:
    """``path`` (a folder, or a database file) exists as one or can be created, in a folder this process may
    write into."""
    what = "a folder advbench can write (the file store)" if folder else "a database file advbench can write"
    existing = next(p for p in [path, *path.parents] if p.exists())
    if existing != path and not existing.is_dir():
        raise AdvbenchError(f"{key}: {existing} is a file, so {path} cannot be created: expected {what}")
    if existing == path and path.is_dir() != folder:
        raise AdvbenchError(f"{key}: {path} is {'a file' if folder else 'a folder'}: expected {what}")
    where = existing if existing != path else (path if folder else path.parent)
    if not os.access(where, os.W_OK | os.X_OK) or not _can_create_in(where):
        raise AdvbenchError(f"{key}: {where} is not writable: expected {what}")


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in ``folder``: os.access answers yes for root even in /proc."""
    import tempfile
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".advbench-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def _known_scheme(uri: str) -> bool:
    """Whether MLflow has a tracking store for the URI's scheme (its plugins' included); asked without any
    connection being made."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    except ImportError:  # a future MLflow that moved its registry: judge by the schemes it has always had
        return urlparse(uri).scheme.split("+")[0] in _URI_SCHEMES
    try:
        _tracking_store_registry.get_store_builder(uri)
        return True
    except Exception:  # MLflow's UnsupportedModelRegistryStoreURIException, whatever its module
        return False


def check_mlflow_uri(uri: str) -> None:
    """logger.mlflow_uri is a folder this process can write, or a tracking URI MLflow knows (never contacted)."""
    key = f"logger.mlflow_uri={uri}"
    if _is_folder(uri):
        _writable(Path(uri).expanduser().resolve(), key, folder=True)
        return
    parts = urlparse(uri)
    if not _known_scheme(uri):
        raise AdvbenchError(f"{key}: not a tracking URI MLflow knows: expected a folder, or a URI such as "
                            "file:///path, sqlite:///mlflow.db, http://host:5000")
    if parts.scheme in ("http", "https") and not parts.netloc:
        raise AdvbenchError(f"{key}: names no host: expected {parts.scheme}://host[:port]")
    if parts.scheme == "file":
        _writable(Path(parts.path).expanduser().resolve(), key, folder=True)
    if parts.scheme == "sqlite" and parts.path not in ("", "/", "/:memory:"):
        _writable(Path(parts.path[1:]).expanduser().resolve(), key, folder=False)


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
        _require("mlflow", "mlflow", "mlflow")
        check_mlflow_uri(str(settings.mlflow_uri))
    if "wandb" in names:
        if settings.wandb_mode not in WANDB_MODES:
            raise AdvbenchError(f"logger.wandb_mode={settings.wandb_mode}: expected {', '.join(WANDB_MODES)}")
        _require("wandb", "wandb", "wandb")
    if "tensorboard" in names:
        _require("torch.utils.tensorboard", "tensorboard", "tensorboard")


class MLflow:
    """An MLflow run in a local file store (logger.mlflow_uri): params, metrics per epoch, files as artifacts."""

    def __init__(self, out: Path, settings):
        self.mlflow = mlflow = _require("mlflow", "mlflow", "mlflow")
        uri = str(settings.mlflow_uri)
        if _is_folder(uri):
            # A local file store, as asked: MLflow 3 keeps it working but wants the opt-in said out loud.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = Path(uri).resolve().as_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(settings.experiment)
        self.run = mlflow.start_run(run_name=f"{out.parent.name}/{out.name}")

    def hyperparams(self, config: dict) -> None:
        params = {k: str(v)[:500] for k, v in flat(config).items()}
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self.mlflow.log_params(dict(items[i:i + 100]))

    def metrics(self, row: dict, step: int) -> None:
        self.mlflow.log_metrics(numbers(row), step=step)

    def results(self, results: dict, out: Path) -> None:
        self.mlflow.log_metrics({f"test.{k}": v for k, v in numbers(results).items()})
        for pattern in ARTIFACTS:
            for path in sorted(out.glob(pattern)):
                self.mlflow.log_artifact(str(path))

    def close(self) -> None:
        self.mlflow.end_run()


class WandB:
    """A Weights & Biases run (offline by default: ``wandb sync`` uploads it later)."""

    def __init__(self, out: Path, settings):
        self.wandb = wandb = _require("wandb", "wandb", "wandb")
        self.run = wandb.init(project=settings.experiment, dir=str(out), mode=settings.wandb_mode,
                              name=f"{out.parent.name}/{out.name}", reinit="finish_previous")

    def hyperparams(self, config: dict) -> None:
        self.run.config.update(flat(config), allow_val_change=True)

    def metrics(self, row: dict, step: int) -> None:
        self.run.log({_group(k): v for k, v in numbers(row).items()}, step=step)

    def results(self, results: dict, out: Path) -> None:
        self.run.summary.update({f"test/{k}": v for k, v in numbers(results).items()})
        self.run.log({f"figures/{p.stem}": self.wandb.Image(str(p)) for p in sorted(out.glob("*.png"))})

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"csv": CSV, "tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class Trackers:
    """The chosen trackers, called together; none chosen: every call does nothing."""

    def __init__(self, names, out: Path, settings):
        unknown = [n for n in names if n not in TRACKERS]
        if unknown:
            raise AdvbenchError(f"logger.trackers: {', '.join(unknown)} unknown; expected {', '.join(TRACKERS)}")
        self.out, self.all = out, []
        try:
            for name in names:
                self.all.append(TRACKERS[name](out, settings))
        except BaseException:
            self.close()
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

    def close(self) -> None:
        """End every tracker's run; one failing to close does not keep the others open."""
        for tracker in self.all:
            try:
                tracker.close()
            except Exception as err:  # a tracker's own shutdown problem must not hide the run's outcome
                log.warning("closing %s: %s", type(tracker).__name__, err)
