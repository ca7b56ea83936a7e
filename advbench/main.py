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

from advbench.cli import install_signal_handlers
from advbench.config import register_configs
from advbench.errors import AdvbenchError, Interrupted

# torch is imported only once a run starts (run, distributed, write_status below): --help and shell completion
# compose the config alone and answer in well under a second.

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
                            "unreadable (truncated?); evaluate its model again with task=eval "
                            f"checkpoint={out}") from None


class DirectoryTaken(AdvbenchError):
    """Another run's files are in the directory: its status must not be touched."""


def claim(out: Path) -> None:
    """Mark ``out`` as this run's: the status file is created exclusively, so no two runs share a directory."""
    try:
        os.close(os.open(out / "status", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        raise DirectoryTaken(f"{out} already holds another run ({(out / 'status').read_text().strip()}): "
                            f"continue it with resume={out}, or choose another directory") from None


def write_status(out: Path, status: str) -> None:
    from advbench.runtime.outputs import write_status as write
    write(out, status)


def record(out: Path, status: str) -> None:
    """Write the status file if the disk lets us: a full disk must not hide the error being reported."""
    try:
        write_status(out, status)
    except (AdvbenchError, OSError):
        log.warning("could not write %s", out / "status")


def job(cfg, out: Path, started: list):
    """Claim the directory (or find it finished), run, and mark it finished."""
    if cfg.resume:
        done, result = finished_result(out)
        if done:
            log.info("%s has finished already: skipped", out)
            return result
    else:
        claim(out)

    def on_start():  # once the config has passed every check: a refused resume leaves the run's status alone
        started.append(True)
        write_status(out, "running")
    from advbench.experiment import run
    result = run(cfg, out, on_start)
    write_status(out, "finished")
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> float | None:
    """Run one experiment; return its headline metric for sweepers (a training run's best robust validation
    accuracy, an evaluation's worst-case robust accuracy on the test split).

    A job of a multirun that fails is recorded (its ``status`` file, its log) and the sweep goes on; the sweep
    then exits non-zero. SIGINT and SIGTERM stop the run cleanly: every file is written atomically, and
    ``resume`` continues from last.pt.
    """
    STARTED.append(True)
    install_signal_handlers()
    from advbench.runtime import distributed
    out = Path(HydraConfig.get().runtime.output_dir if distributed.is_main() else distributed.scratch_dir())
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    started = []
    try:
        return job(cfg, out, started)
    except Interrupted as err:
        if (out / "last.pt").exists():
            record(out, f"interrupted: {err}")
            log.error("interrupted (%s): files of the last finished epoch kept; continue with: advbench "
                      "resume=%s", err, out)
        else:
            record(out, f"interrupted: {err} (before the first epoch ended: nothing to resume)")
            log.error("interrupted (%s) before the first epoch ended: nothing to resume; start the run again",
                      err)
        sys.exit(3)
    except AdvbenchError as err:
        if started or not (cfg.resume or isinstance(err, DirectoryTaken)):  # never another run's status
            record(out, f"failed: {err}")
        log.error("%s", err)
        if sweeping:
            return None
        sys.exit(err.exit_code)
    except Exception as err:  # a bug or an out-of-memory: the traceback goes to the job's log
        record(out, f"failed: {type(err).__name__}: {err}")
        if sweeping:
            log.exception("job failed; the sweep goes on")
            return None
        raise
    finally:
        distributed.teardown()
        if not distributed.is_main():
            shutil.rmtree(out, ignore_errors=True)  # torchrun: the other ranks' scratch directory
