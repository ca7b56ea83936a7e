"""Files of a run directory, each written atomically: a temp file in the same directory, then a rename."""
import json
import os
import platform
import tempfile
from pathlib import Path

import torch


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide results from collaborators
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_jsonl(path: Path, rows: list) -> None:
    """Write ``rows`` as JSON lines (the whole file each time, so a reader never sees half a line)."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def write_status(run_dir: Path, status: str) -> None:
    """The run's ``status`` file: running, finished, failed: <why> or interrupted: <why>."""
    atomic_write(Path(run_dir) / "status", lambda f: f.write((status + "\n").encode()))


def versions() -> dict:
    """Versions of the software a result depends on."""
    import torchvision

    from advbench import __version__
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "advbench": __version__}
