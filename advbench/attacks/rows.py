"""How many rows an attack may run side by side: the batch size of the evaluation calling it.

An evaluation sizes its batches to what the device holds (``eval.batch_size``, or ``auto``: the largest that
fits), but hands an attack only the examples still robust, often far fewer. An attack that runs several copies
of each example (APGD-T's target classes) can fill the rest of the batch with them, so that a GPU's steps stay
large as examples drop out, without asking for more memory than the evaluation's own batches do.
"""
import contextvars
from contextlib import contextmanager

_ROWS = contextvars.ContextVar("advbench_attack_rows", default=None)


@contextmanager
def row_budget(rows: int):
    """Within the body, attacks may run up to ``rows`` rows side by side."""
    token = _ROWS.set(int(rows))
    try:
        yield
    finally:
        _ROWS.reset(token)


def rows_that_fit(given: int) -> int:
    """The rows an attack handed ``given`` examples may run side by side: the evaluation's batch size where one
    is running (never fewer than ``given``), else ``given``."""
    budget = _ROWS.get()
    return given if budget is None else max(budget, given)


def next_targets(pending: list, alive, given: int) -> tuple:
    """The target classes to run side by side on the examples ``alive`` (as many as fit the rows of
    ``rows_that_fit(given)``, at least one), their rows (``alive`` once per target, target by target) and the
    targets left for later."""
    k = max(1, min(len(pending), rows_that_fit(given) // alive.numel()))
    return pending[:k], alive.repeat(k), pending[k:]
