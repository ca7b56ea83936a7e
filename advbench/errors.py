"""The exceptions the CLI turns into a one-line message and an exit code instead of a traceback."""


class AdvbenchError(Exception):
    """A user-facing error in what was asked: a bad config value, a missing data set, an unusable checkpoint."""

    exit_code = 2


class RunFailed(AdvbenchError):
    """The run could not go on although its input was fine: it diverged, or the disk is full."""

    exit_code = 1


class Interrupted(BaseException):
    """SIGINT, SIGTERM or ``stop_after_epoch``: the run stops cleanly and can be resumed.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way (Hydra's included)
    mistakes it for a failure.
    """


def chain(err: BaseException | None, context: bool = False):
    """``err`` and the errors behind it: its causes, and with ``context`` the errors it was raised while handling."""
    seen = set()
    while err is not None and id(err) not in seen:
        yield err
        seen.add(id(err))
        err = err.__cause__ or (err.__context__ if context else None)


def interruption(err: BaseException | None) -> Interrupted | None:
    """The ``Interrupted`` that ``err`` is, or wraps as its cause: Python itself wraps one raised in a class's
    ``__set_name__`` (as an import runs) in a RuntimeError."""
    return next((e for e in chain(err) if isinstance(e, Interrupted)), None)


class Refused(SystemExit):
    """The exit of a check that ran before the task (a Hydra callback): its code is deliberate, not Hydra's."""


def unimportable(err: Exception) -> AdvbenchError | None:
    """Hydra's "Error locating target" as a one-line error naming the key, or None for any other error."""
    import re
    found = re.search(r"Error locating target '([^']+)'", str(err))
    if not found:
        return None
    key = re.search(r"full_key: (\S+)", str(err))
    return AdvbenchError(f"{key.group(1) + '.' if key else ''}_target_={found.group(1)} cannot be imported: code in "
                         "the directory advbench starts from is importable; elsewhere add its folder to PYTHONPATH")
