"""The Hydra task function: one run (or one sweep job) in its own directory, its status recorded whatever happens."""
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from advbench.config import register_configs
from advbench.errors import AdvbenchError, Interrupted, interruption
from advbench.runtime.callbacks import CLAIMED, NOT_RUN
from advbench.runtime.outputs import DeferredLog, NoSpace, no_space, write_hydra_files, write_status
from advbench.runtime.lock import LOCK, OWNER, DirectoryTaken, InUse, hold, holder, own, release, status_of
from advbench.runtime.rundir import holds_run, rank_scratch
from advbench.runtime.signals import install_signal_handlers

# torch is imported only once a run starts (run, distributed below): shell completion composes the config alone and
# answers in well under a second. advbench's own --help (cli.py) reads the tasks' classes, and so imports torch.

log = logging.getLogger(__name__)
register_configs()
STARTED: list = []  # the console entry point learns from it whether an exit came from Hydra or from the run


def finished_result(out: Path):
    """(True, headline metric) when the run in ``out`` has finished; (False, None) otherwise."""
    if not (out / "status").exists() or (out / "status").read_text().strip() != "finished":
        return False, None
    try:
        from advbench.experiment import headline
        return True, headline(json.loads((out / "results.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        raise AdvbenchError(f"resume={out}: the run is marked finished but its results.json is missing or "
                            "unreadable (truncated?); evaluate its model again with job=eval "
                            f"checkpoint={out}") from None


def claim(out: Path) -> None:
    """Mark ``out`` as this run's: the status file is created exclusively, so no two runs share a directory."""
    try:
        os.close(os.open(out / "status", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        raise DirectoryTaken(f"{out}: already holds another run ({status_of(out)}): continue it with "
                             f"resume={out}, or choose another directory") from None


def hold_job(out: Path) -> None:
    """Hold the directory (a run holds it already, from on_run_start; a sweep's job claims it here)."""
    try:
        hold(out)
    except InUse as err:
        raise DirectoryTaken(f"{out}: not run, another advbench run is running there ({holder(err.owner)})") \
            from None


def hydra_texts(cfg) -> dict:
    """The files Hydra would have written in its config folder, as it writes them."""
    hydra_cfg = HydraConfig.instance().cfg
    return {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
            "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}


def record(out: Path, status: str) -> None:
    """Write the status file if the disk lets us: a full disk must not hide the error being reported."""
    try:
        write_status(out, status)
    except (AdvbenchError, OSError):
        log.warning("could not write %s", out / "status")


def job(cfg, out: Path, owned: list, logs) -> float | None:
    """Hold the directory (or find it finished), run, and mark it finished. Nothing is written in it (config
    folder, log lines, owner record, status) before the run is accepted: a refused command leaves it as it was."""
    from advbench.runtime import distributed
    main_rank, texts = distributed.is_main(), hydra_texts(cfg)  # the config as given, before the run reads it

    def accepted(folder: str) -> None:
        owned.append(True)
        logs.start()
        if main_rank:  # under torchrun only rank 0 writes a config folder
            own(out)
            write_hydra_files(out / folder, texts)

    if main_rank:
        hold_job(out)
    resumed = bool(cfg.resume) and holds_run(out) is not None  # resume=auto starts a job that never ran
    if resumed:
        done, result = finished_result(out)
        if done:
            from advbench.config_sources import check_finished
            check_finished(cfg, out)
            log.info("%s has finished already: skipped", out)
            return result
    else:
        claim(out)
        accepted(".hydra")

    def on_start():  # once the config has passed every check: a refused resume leaves the run as it was
        if resumed:
            accepted(".hydra_resume")
        owned.append("started")  # a new run refused before this point is taken back (withdraw)
        write_status(out, "running")
    from advbench.experiment import run
    result = run(cfg, out, on_start)
    write_status(out, "finished")
    return result


def withdraw(out: Path, why: str) -> None:
    """Take back what a new run refused before it began wrote: its directory where it was made for it (with the
    folders made with it, while empty), else only the files it added. Where anything else appeared there, nothing
    is removed and the status says ``refused: <why>`` (advbench-report lists such runs apart, never as failed)."""
    root, claimed = logging.getLogger(), CLAIMED.get(os.path.realpath(out))
    logs = [h for h in root.handlers
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve().parent == out.resolve()]
    before, made = claimed or (frozenset(), [])
    added = set(os.listdir(out)) - (before or frozenset())
    if claimed is None or added - {LOCK, OWNER, ".hydra", "status", *(Path(h.baseFilename).name for h in logs)}:
        record(out, f"refused: {why}")
        return
    for handler in logs:  # the log file goes too: its lines, the error included, are on the console
        root.removeHandler(handler)
        handler.close()
    try:
        if before is None:  # made for this run and holding only its files: the lock file goes with it
            shutil.rmtree(out)
        else:  # the user's folder: the empty lock file stays, as after any command held it
            for path in (out / name for name in added - {LOCK, OWNER}):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    except OSError as err:
        log.warning("%s: could not remove what the refused run wrote (%s)", out, err)
        if out.is_dir():
            record(out, f"refused: {why}")
        return
    for folder in made[1:]:  # the folders made with it (outputs/<name>/), while nothing else is in them
        try:
            os.rmdir(folder)
        except OSError:
            break


def stopped(out: Path, err: Interrupted, owned: list) -> None:
    """Record and report an interruption (in a directory the run does not own yet: report it only)."""
    if not owned:
        advice = f"; continue it with: advbench resume={out}" if (out / "last.pt").exists() else ""
        log.error("interrupted (%s) before the run began: nothing was written in %s%s", err, out, advice)
    elif (out / "last.pt").exists():
        record(out, f"interrupted: {err}")
        log.error("interrupted (%s): files of the last finished epoch kept; continue with: advbench resume=%s",
                  err, out)
    else:
        record(out, f"interrupted: {err} (before the first epoch ended: nothing to resume)")
        log.error("interrupted (%s) before the first epoch ended: nothing to resume; start the run again", err)


def explained(err: AdvbenchError, out: Path) -> str:
    """The one-line message of ``err``; a full disk's says how to go on."""
    if isinstance(err, NoSpace) and (out / "last.pt").exists():
        return f"{err}: free some space, then continue with: advbench resume={out}"
    return str(err)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> float | None:
    """Run one experiment; return its headline metric for sweepers (a training run's best robust validation
    accuracy, an evaluation's worst-case robust accuracy on the test split).

    A job of a multirun that fails is recorded (its ``status`` file, its log) and the sweep goes on; the sweep
    then exits non-zero. SIGINT and SIGTERM stop the run cleanly: every file is written atomically, and
    ``resume`` continues from last.pt. A full disk is a failure like any other: one line, exit 1.
    """
    STARTED.append(True)
    install_signal_handlers()
    from advbench.runtime import distributed
    out = Path(HydraConfig.get().runtime.output_dir if distributed.is_main() else distributed.scratch_dir())
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    owned, logs = [], DeferredLog(out)
    try:
        return job(cfg, out, owned, logs)
    except (Interrupted, Exception) as caught:
        if stop := interruption(caught):
            stopped(out, stop, owned)
            sys.exit(3)
        err = no_space(caught) or caught
        if not isinstance(err, AdvbenchError):  # a bug or an out-of-memory: the traceback goes to the job's log
            if owned:
                record(out, f"failed: {type(err).__name__}: {err}")
            if sweeping:
                log.exception("job failed; the sweep goes on")
                return None
            raise
        refused = owned and "started" not in owned and err.exit_code == 2 and distributed.is_main()
        if refused and not sweeping:
            withdraw(out, str(err))  # refused before it began: no run directory left behind
        elif refused:  # a sweep's job keeps its numbered directory, marked as refused (the report lists it apart)
            record(out, f"refused: {err}")
        elif owned:  # never another run's status
            record(out, f"failed: {err}")
        elif sweeping:
            NOT_RUN.append((out, str(err).removeprefix(f"{out}: ")))
        log.error("%s", explained(err, out))
        if sweeping:
            return None
        sys.exit(err.exit_code)
    finally:
        logs.drop()  # the lines of a command refused here go to the console only
        if distributed.is_main():
            release(out)
        distributed.teardown()
        if not distributed.is_main():  # torchrun: the other ranks' scratch directories
            shutil.rmtree(out, ignore_errors=True)
            if HydraConfig.get().runtime.output_dir == rank_scratch():  # not a directory the user named
                shutil.rmtree(rank_scratch(), ignore_errors=True)
