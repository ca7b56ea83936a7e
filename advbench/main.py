"""The ``advbench`` command: Hydra composes the config, ``run`` does the experiment."""
import json
import logging
import shutil
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from advbench import distributed
from advbench.config import register_configs
from advbench.errors import AdvbenchError, Interrupted
from advbench.experiment import run
from advbench.outputs import write_status

log = logging.getLogger(__name__)
register_configs()
# conf/ sits beside the package at the top of the checkout (the package is installed editable).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def finished_result(out: Path):
    """(True, headline metric) when the run in ``out`` has finished; (False, None) otherwise."""
    if (out / "status").exists() and (out / "status").read_text().strip() == "finished":
        return True, json.loads((out / "results.json").read_text())["robust_acc"]
    return False, None


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def main(cfg) -> float | None:
    """Run one experiment; return its worst-case robust accuracy for sweepers.

    A job of a multirun that fails is recorded (its ``status`` file, its log) and the sweep goes on. SIGINT and
    SIGTERM stop the run cleanly: every file is written atomically, and ``resume`` continues from last.pt.
    """
    out = Path(HydraConfig.get().runtime.output_dir if distributed.is_main() else distributed.scratch_dir())
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    if cfg.resume:
        done, result = finished_result(out)
        if done:
            log.info("%s has finished already: skipped", out)
            return result
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupted)
    write_status(out, "running")
    try:
        result = run(cfg, out)
        write_status(out, "finished")
        return result
    except Interrupted as err:
        write_status(out, f"interrupted: {err}")
        log.error("interrupted (%s): files of the last finished epoch kept; continue with: advbench resume=%s",
                  err, out)
        sys.exit(3)
    except AdvbenchError as err:
        write_status(out, f"failed: {err}")
        log.error("%s", err)
        if sweeping:
            return None
        sys.exit(2)
    except Exception as err:  # a bug or an out-of-memory: the traceback goes to the job's log
        write_status(out, f"failed: {type(err).__name__}: {err}")
        if sweeping:
            log.exception("job failed; the sweep goes on")
            return None
        raise
    finally:
        distributed.teardown()
        if not distributed.is_main():
            shutil.rmtree(out, ignore_errors=True)  # torchrun: the other ranks' scratch directory


if __name__ == "__main__":
    main()
