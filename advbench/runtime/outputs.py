"""Files of a run directory, each written atomically: a temp file in the same directory, then a rename."""
import errno
import json
import logging
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

from advbench.errors import RunFailed, chain

# torch is imported where it is used: the Hydra callbacks write a run directory's lock record before torch loads.
FULL = (errno.ENOSPC, errno.EDQUOT)


class NoSpace(RunFailed):
    """The disk (or the user's quota) is full: ``path`` was not written; its previous version, if any, is intact."""

    def __init__(self, path):
        super().__init__(f"no space left on device ({path})")
        self.path = path


def no_space(err: BaseException) -> NoSpace | None:
    """``err`` as a NoSpace if a full disk caused it (whoever wrote the file), else None."""
    for cause in chain(err, context=True):
        if isinstance(cause, NoSpace):
            return cause
        if isinstance(cause, OSError) and cause.errno in FULL:
            return NoSpace(cause.filename or "a file of the run")
    return None


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        if err.errno in FULL:  # no room (or no inode) left even for the temp file
            raise NoSpace(path) from None
        raise
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide results from collaborators
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if no_space(err):  # the writer's own error may wrap the OSError (torch.save's does not, today)
            raise NoSpace(path) from None
        raise


def finite(obj):
    """``obj`` with every NaN or infinite float replaced by None: NaN and Infinity are not JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON."""
    atomic_write(path, lambda f: f.write((json.dumps(finite(obj), indent=2, allow_nan=False) + "\n").encode()))


def write_jsonl(path: Path, rows: list) -> None:
    """Write ``rows`` as JSON lines (the whole file each time, so a reader never sees half a line)."""
    text = "".join(json.dumps(finite(r), allow_nan=False) + "\n" for r in rows)
    atomic_write(path, lambda f: f.write(text.encode()))


def write_yaml(path: Path, cfg) -> None:
    """Write an OmegaConf config as YAML (what ``OmegaConf.save`` writes)."""
    from omegaconf import OmegaConf
    text = OmegaConf.to_yaml(cfg)
    atomic_write(path, lambda f: f.write(text.encode()))


def write_status(run_dir: Path, status: str) -> None:
    """The run's ``status`` file: running, finished, failed: <why> or interrupted: <why>."""
    path, data = Path(run_dir) / "status", (" ".join(status.split()) + "\n").encode()
    try:
        atomic_write(path, lambda f: f.write(data))
    except NoSpace:
        if not path.is_file():
            raise
        # No room for a temp file: overwrite the status in place. A few bytes fit in the block the file already
        # has, and a status saying why the run stopped is worth more than an atomic one.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        except OSError as err:
            raise NoSpace(path) from err
        finally:
            os.close(fd)


def versions() -> dict:
    """Versions of the software a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from advbench.version import __version__
    try:  # read from its metadata: importing torchvision only for its version costs a run about 2 s
        vision = version("torchvision")
    except PackageNotFoundError:
        vision = None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": vision,
            "advbench": __version__}


def write_hydra_files(folder: Path, texts: dict) -> None:
    """Hydra's config folder (config.yaml, hydra.yaml, overrides.yaml: ``texts``), each file atomically."""
    Path(folder).mkdir(exist_ok=True)
    for name, text in texts.items():
        atomic_write(Path(folder) / name, lambda f, text=text: f.write(text.encode()))


class _Held(logging.Handler):
    """Stands in for a log file's handler, keeping its records until the run may write there."""

    def __init__(self, target: logging.FileHandler):
        super().__init__(target.level)
        self.target, self.records = target, []

    def emit(self, record) -> None:
        self.records.append(record)


class DeferredLog:
    """The lines bound for the log files in ``out``, held back until ``start``: a command refused there (another
    run holds the directory, a resume is refused) leaves that run's log as it was; ``drop`` forgets them."""

    def __init__(self, out: Path):
        root, out = logging.getLogger(), Path(out).resolve()
        self.held = [h for h in root.handlers
                     if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve().parent == out]
        self.held = [_Held(h) for h in self.held]
        for held in self.held:
            root.removeHandler(held.target)
            root.addHandler(held)

    def start(self) -> None:
        """The directory is the run's: write the lines held back, and the later ones as they come."""
        root = logging.getLogger()
        for held in self.held:
            root.removeHandler(held)
            held.target.handleError = _quiet_when_full(held.target.handleError)
            root.addHandler(held.target)
            for record in held.records:
                held.target.handle(record)
        self.held = []

    def drop(self) -> None:
        """Forget the lines held back and write no more to these files."""
        root = logging.getLogger()
        for held in self.held:
            root.removeHandler(held)
            held.target.close()
        self.held = []


def _quiet_when_full(handle_error):
    """A log handler's handleError that skips a line the full disk refused: the console still shows it, and a
    traceback per line would bury the one-line error."""
    def handle(record):
        if not no_space(sys.exc_info()[1]):
            handle_error(record)
    return handle
