"""The ``advbench`` command: signals handled from the first instruction, then Hydra, then the exit code.

Exit codes: 0 done; 1 the run failed (diverged, disk full, a sweep job failed, a bug: with its traceback);
2 bad input (advbench's own checks and Hydra's: unknown option or key, wrong type); 3 interrupted (SIGINT,
SIGTERM, ``stop_after_epoch``).
"""
import logging
import os
import sys

from advbench.errors import Interrupted, Refused
from advbench.runtime.signals import install_signal_handlers

log = logging.getLogger("advbench")
# Old spellings of command-line keys: old -> new. ``task`` named the job before it came to name the problem.
RENAMED = {"task": "job"}


def renamed(argv: list) -> list:
    """``argv`` with each override of a renamed key spelled the new way, and a deprecation warning for each."""
    out = []
    for arg in argv:
        prefix = arg[:len(arg) - len(arg.lstrip("+~"))]
        key, eq, value = arg[len(prefix):].partition("=")
        if not arg.startswith("-") and eq and key in RENAMED:
            log.warning("%s%s=%s is deprecated: write %s%s=%s (%s now names the problem, which the data set "
                        "poses)", prefix, key, value, prefix, RENAMED[key], value, key)
            arg = f"{prefix}{RENAMED[key]}={value}"
        out.append(arg)
    return out


def _load_entry():
    from advbench import main as entry  # imports torch and Hydra: seconds
    return entry


def main() -> None:
    """Console entry point of ``advbench`` and ``python -m advbench``."""
    install_signal_handlers()  # before the heavy imports: a Ctrl-C during start-up is a clean stop too
    # As with `python -m`: a _target_ in the directory advbench starts from (a model, a data set) is importable.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    sys.argv[1:] = renamed(sys.argv[1:])
    started = []
    try:
        entry = _load_entry()
        entry.STARTED = started
        entry.main()
    except Interrupted as err:  # before the run began: nothing was written
        log.error("interrupted (%s) during start-up: nothing was written", err)
        sys.exit(3)
    except BrokenPipeError:  # `advbench --help | head`: the reader has gone, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's recipe: no error at exit
        sys.exit(0)
    except SystemExit as done:
        # Hydra exits 1 on its own errors (unknown option or key, wrong type): bad input, like advbench's.
        hydras_own = not started and not isinstance(done, Refused)
        sys.exit(2 if done.code == 1 and hydras_own else done.code)
    finally:
        from advbench.runtime.lock import release
        release()  # the directories this command held (a caller in this process may start another run)


if __name__ == "__main__":
    main()
