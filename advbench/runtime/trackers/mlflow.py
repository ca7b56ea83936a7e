"""The mlflow tracker: one MLflow run per job (reopened by a resume), and the checks of logger.mlflow_uri."""
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from advbench.errors import AdvbenchError
from advbench.runtime.trackers.common import epoch_metrics, files, final_metrics, flat, outcome, require

log = logging.getLogger(__name__)
_URI_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")  # MLflow's own
STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


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


def _limits() -> tuple:
    """(longest param value, most params per call) MLflow accepts."""
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
        return MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
    except ImportError:  # an MLflow that moved them: its limits since 1.x
        return 500, 100


class MLflow:
    """An MLflow run (logger.mlflow_uri): the config as params, metrics per epoch (step = epoch), the test metrics,
    figures and result files as artifacts. A resume reopens the run it continues."""

    def __init__(self, out: Path, settings, previous: dict | None = None, resumed: int | None = None):
        self.mlflow = mlflow = require("mlflow", "mlflow", "mlflow")
        uri = str(settings.mlflow_uri)
        if _is_folder(uri):
            # A local file store, as asked: MLflow 3 keeps it working but wants the opt-in said out loud.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = Path(uri).resolve().as_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(settings.experiment)
        self.step, self.run = resumed or 0, None
        if resumed and (previous or {}).get("run_id"):
            from mlflow.exceptions import MlflowException
            try:
                self.run = mlflow.start_run(run_id=previous["run_id"])
            except MlflowException as err:  # another store, or the run was deleted
                log.warning("logger=mlflow: cannot reopen run %s in %s (%s); starting a new run", previous["run_id"],
                            uri, str(err).splitlines()[0])
        if self.run is None:
            self.run = mlflow.start_run(run_name=f"{out.parent.name}/{out.name}")

    def ids(self) -> dict:
        return {"run_id": self.run.info.run_id, "experiment_id": self.run.info.experiment_id,
                "tracking_uri": self.mlflow.get_tracking_uri()}

    def hyperparams(self, config: dict) -> None:
        longest, per_call = _limits()
        params = {k: str(v)[:longest] for k, v in flat(config).items()}
        logged = self.mlflow.get_run(self.run.info.run_id).data.params  # a reopened run's, from before the resume
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:  # MLflow refuses to change a param; config_resolved.yaml (an artifact) holds the new values
            log.info("logger=mlflow: the resumed run keeps its first %s", ", ".join(changed))
        items = [(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(items), per_call):
            self.mlflow.log_params(dict(items[i:i + per_call]))

    def metrics(self, row: dict, step: int) -> None:
        self.step = step
        self.mlflow.log_metrics(epoch_metrics(row), step=step)

    def results(self, results: dict, out: Path) -> None:
        self.mlflow.log_metrics({f"test.{k}": v for k, v in final_metrics(results).items()}, step=self.step)
        for path in files(out):
            self.mlflow.log_artifact(str(path))

    def close(self, failed: BaseException | None = None) -> None:
        self.mlflow.end_run(status=STATUS[outcome(failed)])
