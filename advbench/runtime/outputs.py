"""Files of a run directory, each written atomically: a temp file in the same directory, then a rename."""
import errno
import json
import math
import os
import platform
import tempfile
from pathlib import Path

import torch

from advbench.errors import RunFailed


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
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunFailed(f"{path}: no space left on device (the previous version of the file, if any, "
                                "is intact)") from None
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


def write_status(run_dir: Path, status: str) -> None:
    """The run's ``status`` file: running, finished, failed: <why> or interrupted: <why>."""
    atomic_write(Path(run_dir) / "status", lambda f: f.write((" ".join(status.split()) + "\n").encode()))


def versions() -> dict:
    """Versions of the software a result depends on."""
    import torchvision

    from advbench import __version__
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "advbench": __version__}
