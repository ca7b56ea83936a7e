"""A run directory's one writer: a lock held for the run's life (flock on LOCK) and a record of who holds it
(OWNER), so that two commands never write into one directory and a refused one names the holder."""
import atexit
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from advbench.errors import AdvbenchError
from advbench.runtime.outputs import atomic_write, no_space
from advbench.runtime.rundir import holds_run

log = logging.getLogger(__name__)
# A run holds its directory for its whole life: an flock on LOCK (never removed, so every process locks the same
# file), and OWNER recording who holds it, removed when the holder lets go. The kernel drops the flock of a process
# that dies, however it dies: a killed run's directory is free again, and its OWNER, left behind, is only reported.
LOCK, OWNER = ".advbench.lock", ".advbench.owner"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # file systems without flock
_held: dict = {}  # real path of each directory this process holds -> its lock's fd, OWNER record, whether written


class DirectoryTaken(AdvbenchError):
    """The directory holds another run, or another process holds it: nothing in it may be touched."""


class InUse(DirectoryTaken):
    """Another live advbench process holds the directory."""

    def __init__(self, path, owner: dict | None):
        owner = owner if owner and _alive(owner) else None  # a dead one's record: the holder has not written its own
        super().__init__(f"{path} is in use by {holder(owner)}")
        self.path, self.owner = path, owner


def holder(owner: dict | None) -> str:
    """Who ``owner`` (an OWNER record) is, in words."""
    if not owner:
        return "another advbench process, starting"
    return f"pid {owner.get('pid')} on host {owner.get('host')} since {owner.get('since')}"


def read_owner(path) -> dict | None:
    """The OWNER record in ``path``, None if there is none (or it cannot be read)."""
    try:
        owner = json.loads((Path(path) / OWNER).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive(owner: dict) -> bool:
    """Whether the process ``owner`` names may still run (one on another host is assumed to)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": os.urandom(8).hex()}


def _hold_by_record(key: str, record: dict) -> None:
    """Where flock is missing: OWNER alone, created exclusively; one whose process is dead is taken over."""
    owner = read_owner(key)
    if owner and _alive(owner):
        raise InUse(key, owner)
    tmp = Path(key) / f".{OWNER}.{record['token']}"
    atomic_write(tmp, lambda f: f.write(json.dumps(record).encode()))
    try:
        if owner:
            os.replace(tmp, Path(key) / OWNER)
        else:
            os.link(tmp, Path(key) / OWNER)  # fails if another process wrote one since we looked
    except FileExistsError:
        raise InUse(key, read_owner(key)) from None
    finally:
        tmp.unlink(missing_ok=True)


def hold(path) -> None:
    """Lock ``path`` for this process until ``release``; raise InUse naming the live process that holds it.

    The OWNER record is written at once where there is none, so that a command refused meanwhile names this
    process; a dead holder's record is replaced only by ``own``, once the directory is accepted: a command refused
    there leaves the directory as it found it."""
    key = os.path.realpath(path)
    if key in _held:
        return
    record = _record()
    try:
        fd = os.open(os.path.join(key, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as err:
        raise no_space(err) or AdvbenchError(f"{key}: cannot create the lock file {LOCK} there "
                                             f"({err.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            raise InUse(key, read_owner(key)) from None
        if err.errno not in _NO_FLOCK:
            raise AdvbenchError(f"{key}: cannot lock {LOCK} there ({err.strerror})") from None
        log.warning("%s: the file system has no file locks: the directory is claimed by its %s record only",
                    key, OWNER)
        _hold_by_record(key, record)
        fd = None
    if not _held:
        atexit.unregister(release)  # once, however many runs this process holds in turn
        atexit.register(release)
    _held[key] = {"fd": fd, "record": record, "owned": fd is None}
    if fd is not None and not (Path(key) / OWNER).exists():
        own(key)


def own(path) -> None:
    """Record this process in ``path``'s OWNER file (it holds the lock), taking over a dead holder's."""
    key = os.path.realpath(path)
    held = _held[key]
    if held["owned"]:
        return
    stale = read_owner(key)
    if stale:
        log.warning("%s: taking it over from %s, which is gone", key, holder(stale))
    try:
        atomic_write(Path(key) / OWNER, lambda f: f.write(json.dumps(held["record"]).encode()))
    except BaseException:
        release(key)
        raise
    held["owned"] = True


def release(path=None) -> None:
    """Let go of ``path`` (default: every directory this process holds)."""
    for key in [os.path.realpath(path)] if path is not None else list(_held):
        held = _held.pop(key, None)
        if held is None:
            continue
        if held["owned"] and read_owner(key) == held["record"]:  # before the lock is dropped: never a successor's
            Path(key, OWNER).unlink(missing_ok=True)
        if held["fd"] is not None:
            os.close(held["fd"])


def status_of(path) -> str | None:
    """What run ``path`` holds, in words, when no live process holds it: None (no run), or the run's status; a
    ``running`` one says its process is gone."""
    status = holds_run(path)
    if status == "running":
        owner = read_owner(path)
        return f"running, but its process{f' ({holder(owner)})' if owner else ''} is gone"
    return status
