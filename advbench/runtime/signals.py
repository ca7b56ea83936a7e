"""SIGINT and SIGTERM as one clean stop: ``Interrupted`` is raised once, and every signal after it is ignored."""
import signal

from advbench.errors import Interrupted

_signalled: list = []


def _on_signal(signum, frame) -> None:
    if _signalled:  # a second Ctrl-C while the first is being handled: the clean stop is already under way
        return
    _signalled.append(signal.Signals(signum).name)
    # Ignored from now on, by the kernel: at exit Python puts back the default action of any signal it handles
    # (but not of an ignored one), and a second Ctrl-C arriving then would kill the process (exit 130).
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(_signalled[0])


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` once; any signals after it are ignored: the clean stop goes on
    and the exit code stays 3."""
    _signalled.clear()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
