"""The one exception type that the CLI turns into a one-line message instead of a traceback."""


class AdvbenchError(Exception):
    """A user-facing error: bad config value, missing data set, unusable checkpoint."""


class Interrupted(Exception):
    """SIGINT, SIGTERM or ``stop_after_epoch``: the run stops cleanly and can be resumed."""
