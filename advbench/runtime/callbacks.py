"""Hydra callbacks that refuse a run before Hydra writes anything, and report a sweep's failed jobs at its end.

Hydra creates the run directory, writes ``.hydra/`` and opens the log before the task function starts, so the
checks that protect another run's files (and the resume rules) run here, in ``on_run_start`` and
``on_multirun_start``.
"""
import logging
import os
import shutil
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from advbench.errors import Refused
from advbench.runtime.rundir import holds_run

log = logging.getLogger("advbench")
MIN_FREE_BYTES = 50 * 2**20  # below this, Hydra's own config files could be left empty


def refuse(message: str, code: int = 2) -> None:
    """Log ``message`` as the one-line error and exit with ``code`` before anything is written."""
    log.error("%s", message)
    raise Refused(code)


def check_free_space(path: Path) -> None:
    """Refuse to start on a (nearly) full disk: half-written config files are worse than no run."""
    existing = next(p for p in [Path(path).absolute(), *Path(path).absolute().parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        refuse(f"{existing}: no space left on device ({free // 2**20} MiB free; advbench needs at least "
               f"{MIN_FREE_BYTES // 2**20} MiB to start a run)", code=1)


def check_resumable(path: Path) -> None:
    """``resume=<path>`` needs a run directory with a finished epoch (last.pt) or a finished run."""
    status = holds_run(path)
    if status is None:
        refuse(f"resume={path}: no advbench run there (no such directory, or no run files in it); give the "
               "directory of an interrupted run")
    if not (Path(path) / "last.pt").is_file() and status != "finished":
        refuse(f"resume={path}: the run ({status}) ended before its first epoch did, so there is nothing to "
               "resume: start it again without resume=")


def _explicit(config, key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


class RunGuard(Callback):
    """Checks at the start of a run or sweep; the failed-job summary at the end of a sweep."""

    def on_run_start(self, config, **kwargs) -> None:
        """Resume rules; an explicit hydra.run.dir holding another run; free disk space."""
        if int(os.environ.get("RANK", 0)) > 0:  # torchrun: rank 0 checks; the others write nothing there
            return
        HydraConfig.instance().set_config(config)  # the run directory's resolvers read it
        given = next((o.split("=", 1)[1] for o in config.hydra.overrides.hydra if o.startswith("hydra.run.dir=")),
                     None)
        check_free_space(Path(given) if given else Path.cwd())  # before anything, even a directory, is made
        resume = config.get("resume")
        if resume == "auto":
            refuse("resume=auto continues the jobs of a sweep: use it with -m and hydra.sweep.dir=<the sweep's "
                   "directory>; to continue one run give resume=<its directory>")
        if resume:
            check_resumable(Path(resume))
        out = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        if not resume and _explicit(config, "hydra.run.dir"):
            status = holds_run(out)
            if status:
                refuse(f"hydra.run.dir={out} already holds a run ({status}): continue it with resume={out}, or "
                       "choose another directory")

    def on_multirun_start(self, config, **kwargs) -> None:
        """A sweep reuses a directory only with resume=auto."""
        self.started = time.time()
        check_free_space(Path.cwd())
        resume = config.get("resume")
        if resume and resume != "auto":
            refuse(f"resume={resume} continues one run; to continue a sweep use resume=auto with "
                   "hydra.sweep.dir=<the sweep's directory>")
        sweep = Path(str(config.hydra.sweep.dir))
        if not resume and _explicit(config, "hydra.sweep.dir") and sweep.is_dir():
            if any(sweep.rglob("status")):
                refuse(f"hydra.sweep.dir={sweep} already holds runs: continue the sweep with resume=auto, or "
                       "choose another directory")
        check_free_space(sweep)

    def on_multirun_end(self, config, **kwargs) -> None:
        """After every job ran: a one-line summary of the jobs that failed, and a non-zero exit."""
        sweep = Path(str(config.hydra.sweep.dir))
        statuses = [(p.parent, p.read_text(errors="replace").strip()) for p in sweep.rglob("status")
                    if p.stat().st_mtime >= getattr(self, "started", 0) - 1]
        failed = [(run, s) for run, s in statuses if not s.startswith("finished")]
        if failed:
            listed = "; ".join(f"{run.relative_to(sweep)}: {s[:120]}" for run, s in failed[:5])
            more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
            refuse(f"{len(failed)} of {len(statuses)} jobs did not finish ({listed}{more})", code=1)
