"""Hydra callbacks that claim a run's (or a sweep's) directory before Hydra touches it, and report a sweep's failed
jobs at its end.

Hydra creates the run directory and opens its log before the task function starts, so a run holds its directory
(``lock.hold``) and the checks that protect another run's files run here, in ``on_run_start`` and
``on_multirun_start``. A sweep's jobs claim their directories in the task function: Hydra writes nothing into them
before (advbench writes the config folder itself, and holds back the log until the directory is the job's).
"""
import logging
import os
import shutil
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advbench.errors import AdvbenchError, Refused, chain
from advbench.runtime.lock import LOCK, InUse, hold, holder, own, release, status_of
from advbench.runtime.rundir import holds_run

log = logging.getLogger("advbench")
MIN_FREE_BYTES = 50 * 2**20  # below this, Hydra's own config files could be left empty
NOT_RUN: list = []  # (directory, why) of the sweep jobs refused before they began: no status file says so
# A new run's directory (real path) -> (its entries before the run, None where it was made for the run; the folders
# made for it, deepest first): what a run refused before it began may take back (main.withdraw), and nothing else.
CLAIMED: dict = {}


def refuse(message: str, code: int = 2) -> None:
    """Log ``message`` as the one-line error and exit with ``code`` before anything is written."""
    log.error("%s", message)
    raise Refused(code)


def check_free_space(path: Path) -> None:
    """Refuse to start on a (nearly) full disk: half-written config files are worse than no run."""
    existing = next(p for p in [Path(path).absolute(), *Path(path).absolute().parents] if p.exists())
    usage = shutil.disk_usage(existing)
    if usage.total and usage.free < MIN_FREE_BYTES:  # no blocks at all (/proc): not a disk, and make_dir says why
        refuse(f"{existing}: no space left on device ({usage.free // 2**20} MiB free; advbench needs at least "
               f"{MIN_FREE_BYTES // 2**20} MiB to start a run)", code=1)


def stop_hint(err: InUse) -> str:
    """How to stop the process that holds a directory."""
    pid = (err.owner or {}).get("pid")
    return f"wait for it to end, or stop it (kill -INT {pid})" if pid else "wait for it to end"


def take(path: Path, busy: str, advice=None) -> None:
    """Hold ``path``; when a live process holds it, refuse with ``busy``, who it is, and ``advice`` (default:
    how to stop it)."""
    try:
        hold(path)
    except InUse as err:
        refuse(f"{busy} ({holder(err.owner)}): {advice or stop_hint(err)}")
    except AdvbenchError as err:  # the lock file cannot be made: a read-only or full disk
        refuse(str(err), err.exit_code)


def keep(path: Path) -> None:
    """The directory is accepted: record this process as its owner."""
    try:
        own(path)
    except AdvbenchError as err:
        refuse(str(err), err.exit_code)


def claim_resumed(path: Path) -> None:
    """``resume=<path>``: hold a run directory with a finished epoch (last.pt) or a finished run, that no live
    process holds. Its owner record is written only once the resume is accepted (main.job)."""
    if holds_run(path) is None:
        refuse(f"resume={path}: no advbench run there (no such directory, or no run files in it); give the "
               "directory of an interrupted run")
    take(path, f"resume={path}: the run is still running")
    status = status_of(path)
    if not (Path(path) / "last.pt").is_file() and status != "finished":
        release(path)
        refuse(f"resume={path}: the run ({status}) ended before its first epoch did, so there is nothing to "
               "resume: start it again without resume=")


def make_dir(path: Path, key: str) -> None:
    """Make ``path`` and its parents, or refuse in one line saying why ``key`` cannot be there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = "it is a file" if path.is_file() else err.strerror or str(err)
        refuse(f"{key}={path}: cannot make the directory there ({why}): give a directory advbench can write")


def resolved_dir(config, key: str) -> Path:
    """``key`` (hydra.run.dir, hydra.sweep.dir) resolved; advbench's default is made as it resolves, and where the
    launch directory is read-only that is refused in one line."""
    try:
        found = OmegaConf.select(config, key)
    except OmegaConfBaseException as err:
        os_error = next((e for e in chain(err, context=True) if isinstance(e, OSError)), None)
        if os_error is None:
            raise
        refuse(f"{key}: cannot make the directory below {Path.cwd()} ({os_error.strerror}): start advbench in a "
               f"directory it can write, or give {key}=<a directory it can write>")
    if not str(found or "").strip():  # Path("") is the launch directory: never meant
        refuse(f"{key} is empty: give a directory (or leave {key} out for advbench's own)")
    return Path(str(found))


def claim_new(out: Path, key: str) -> None:
    """A new run: hold ``out`` (made if missing), which must hold no run."""
    make_dir(out, key)
    def refuse_if_taken() -> None:
        status = status_of(out)
        if status:
            release(out)
            refuse(f"{key}={out} already holds a run ({status}): continue it with resume={out}, or choose another "
                   "directory")
    if not (out / LOCK).exists():  # a run of an advbench without locks: refused before anything is created there
        refuse_if_taken()
    take(out, f"{key}={out} is in use: a run is running there", "choose another directory")
    refuse_if_taken()
    keep(out)


def new_run_dir(config) -> Path:
    """Resolve hydra.run.dir for a new run, noting in CLAIMED what was there before it and what is made for it."""
    raw = str(OmegaConf.to_container(config.hydra.run, resolve=False).get("dir"))
    out = resolved_dir(config, "hydra.run.dir")  # run_dir's resolver makes it here
    where = out.absolute()
    if "${run_dir:" in raw:  # made exclusively (rundir.claim), with outputs/<name>/ below the launch directory
        made = [where, *(p for p in where.parents if Path.cwd().absolute() in p.parents)]
        CLAIMED[os.path.realpath(where)] = (None, made)
    else:
        before = frozenset(os.listdir(where)) if where.is_dir() else None
        CLAIMED[os.path.realpath(where)] = (before, [p for p in [where, *where.parents] if not p.exists()])
    return out


def check_single(config) -> None:
    """A sweeper (hparams_search=..., hydra/sweeper=...) or sweep params in a single run: one plain run would
    ignore them, so it is refused (hparams_search files set hydra.mode: MULTIRUN, so they sweep without -m)."""
    choices = config.hydra.runtime.choices
    sweeper, search = choices.get("hydra/sweeper"), choices.get("hparams_search")
    if sweeper in (None, "basic") and not OmegaConf.select(config, "hydra.sweeper.params"):
        return
    key = (f"hparams_search={search}" if search else f"hydra/sweeper={sweeper}" if sweeper not in (None, "basic")
           else "hydra.sweeper.params")
    refuse(f"{key} is a sweep, and without -m it would be one plain run: add -m (advbench -m {key} ...)")


def _explicit(config, key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def _reused(config, sweep: Path) -> None:
    """Refuse an explicit hydra.sweep.dir holding runs, unless resume=auto."""
    if not config.get("resume") and _explicit(config, "hydra.sweep.dir") and any(sweep.rglob("status")):
        release(sweep)
        refuse(f"hydra.sweep.dir={sweep} already holds runs: continue the sweep with resume=auto, or choose "
               "another directory")


class RunGuard(Callback):
    """Claims at the start of a run or sweep; the failed-job summary at the end of a sweep."""

    def on_run_start(self, config, **kwargs) -> None:
        """Free disk space; then hold the run directory: the resumed one, or a new one holding no run."""
        if int(os.environ.get("RANK", 0)) > 0:  # torchrun: rank 0 holds it; the others write nothing there
            return
        HydraConfig.instance().set_config(config)  # the run directory's resolvers read it
        CLAIMED.clear()
        check_single(config)
        given = next((o.split("=", 1)[1] for o in config.hydra.overrides.hydra if o.startswith("hydra.run.dir=")),
                     None)
        check_free_space(Path(given) if given else Path.cwd())  # before anything, even a directory, is made
        resume = config.get("resume")
        if resume == "auto":
            refuse("resume=auto continues the jobs of a sweep: use it with -m and hydra.sweep.dir=<the sweep's "
                   "directory>; to continue one run give resume=<its directory>")
        if resume:
            claim_resumed(Path(resume))
        else:
            claim_new(new_run_dir(config), "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        """Hold the sweep's directory for the sweep's life; a sweep reuses one only with resume=auto."""
        self.started = time.time()
        NOT_RUN.clear()
        check_free_space(Path.cwd())
        resume = config.get("resume")
        if resume and resume != "auto":
            refuse(f"resume={resume} continues one run; to continue a sweep use resume=auto with "
                   "hydra.sweep.dir=<the sweep's directory>")
        from advbench.search_space import check_search_space  # imports torch: only once a sweep starts
        try:  # an Optuna space whose trials would all fail: refused before the sweep's directory exists
            check_search_space(config)
        except AdvbenchError as err:
            refuse(str(err))
        sweep = resolved_dir(config, "hydra.sweep.dir")
        if sweep.is_dir() and not (sweep / LOCK).exists():  # an advbench without locks ran it: create nothing
            _reused(config, sweep)
        check_free_space(sweep)
        make_dir(sweep, "hydra.sweep.dir")
        take(sweep, f"hydra.sweep.dir={sweep} is in use: a sweep is running there",
             None if resume else "choose another directory")
        _reused(config, sweep)  # no sweep runs there, but one did: resume=auto only
        keep(sweep)

    def on_multirun_end(self, config, **kwargs) -> None:
        """After every job ran: a one-line summary of the jobs that did not finish, and a non-zero exit."""
        sweep = Path(str(config.hydra.sweep.dir))
        release(sweep)
        jobs = {p.parent.resolve(): p.read_text(errors="replace").strip() for p in sweep.rglob("status")
                if p.stat().st_mtime >= getattr(self, "started", 0) - 1}
        jobs |= {Path(run).resolve(): why for run, why in NOT_RUN}  # refused: what it found there, not its status
        failed = [(run, s) for run, s in jobs.items() if not s.startswith("finished")]
        if failed:
            listed = "; ".join(f"{run.relative_to(sweep.resolve())}: {s[:120]}" for run, s in sorted(failed)[:5])
            more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
            refuse(f"{len(failed)} of {len(jobs)} jobs did not finish ({listed}{more})", code=1)
