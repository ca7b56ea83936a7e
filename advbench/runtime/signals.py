"""SIGINT and SIGTERM as one clean stop: ``Interrupted`` is raised once, and every signal after it is ignored.

Never lost: one that arrives while a checkpoint is written waits for it (``deferred``), and one raised where Python
drops exceptions (a ``__del__``, a weakref callback) is sent again (``_redeliver``)."""
import contextlib
import os
import signal
import sys
import threading

from advbench.errors import Interrupted

_signalled: list = []
_hooks: list = []  # the unraisablehook in place before ours
STOPS = (signal.SIGINT, signal.SIGTERM)


def _on_signal(signum, frame) -> None:
    if _signalled:  # a second Ctrl-C while the first is being handled: the clean stop is already under way
        return
    _signalled.append(signal.Signals(signum).name)
    # Ignored from now on, by the kernel: at exit Python puts back the default action of any signal it handles
    # (but not of an ignored one), and a second Ctrl-C arriving then would kill the process (exit 130).
    for other in STOPS:
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(_signalled[0])


def _redeliver(unraisable) -> None:
    """sys.unraisablehook: an ``Interrupted`` that the handler raised inside a ``__del__`` or a weakref callback
    (run by the garbage collector anywhere), which Python reports and drops, is raised again where it stops the run."""
    name = str(unraisable.exc_value)
    if not isinstance(unraisable.exc_value, Interrupted) or name not in (s.name for s in STOPS):
        _hooks[0](unraisable)
        return
    while True:
        try:
            install_signal_handlers()
            # Sent again from another thread, once this hook has returned (an os.kill here would run the handler
            # at once, inside the hook). If the thread is quicker than the hook after all, the handler raises in
            # here: caught below, and sent again.
            timer = threading.Timer(0.01, os.kill, (os.getpid(), signal.Signals[name]))
            timer.daemon = True
            with contextlib.suppress(RuntimeError):  # no new thread at interpreter exit: the command has ended
                timer.start()
            return
        except Interrupted:
            continue


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` once; any signals after it are ignored: the clean stop goes on
    and the exit code stays 3."""
    _signalled.clear()
    for signum in STOPS:
        signal.signal(signum, _on_signal)
    if sys.unraisablehook is not _redeliver:
        _hooks[:] = [sys.unraisablehook]
        sys.unraisablehook = _redeliver


def ignore_from_now() -> None:
    """Ignore SIGINT and SIGTERM for good: for a command whose outcome is decided and written. What is left is
    Python's teardown (about a second with torch loaded, the default actions back), where a Ctrl-C would only turn
    the exit code of a finished run into 130."""
    for signum in STOPS:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def deferred():
    """Hold SIGINT and SIGTERM until the block has ended, then deliver them to the handlers in place before it.

    For C++ that calls back into Python: an exception raised in the callbacks' Python frames can leave the C++
    object unfinished, and its destructor then ends the process with std::terminate (SIGABRT, nothing cleaned up).
    """
    # Python runs signal handlers in the main thread only, and cannot put back a handler set outside Python (None)
    if threading.current_thread() is not threading.main_thread() or None in map(signal.getsignal, STOPS):
        yield
        return
    caught, handlers = [], {}
    try:
        for signum in STOPS:
            handlers[signum] = signal.signal(signum, lambda signum, frame: caught.append(signum))
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):  # once each, as the kernel would have merged them while pending
            signal.raise_signal(signum)
