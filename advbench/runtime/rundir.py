"""Run directories: named after what ran, short enough for any file system, and never shared by two runs."""
import atexit
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import yaml

from advbench.errors import AdvbenchError
from advbench.runtime.outputs import atomic_write, no_space

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# What a run directory holds once a run has started in it: such a directory is never written into again,
# except by resume=<it>.
RUN_FILES = ("status", ".hydra", "last.pt", "model.pt", "results.json", "metrics.jsonl")
_MAX_NAME = 100  # bytes per path component; Linux allows 255, and a sweep's override list has no bound


def short(name: str) -> str:
    """``name`` made path-safe (no '/') and at most 100 characters: a long one keeps its start and a hash."""
    name = str(name).replace("/", "_")
    if len(name.encode()) <= _MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{name.encode()[:_MAX_NAME - 12].decode(errors='ignore')}-{digest}"


def claim(path: str) -> str:
    """Create ``path`` (or ``path-2``, ``path-3``... if taken) atomically and return it: two runs started in the
    same second with the same overrides get two directories."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = path if i == 1 else f"{path}-{i}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: no free directory name")


def holds_run(path: Path) -> str | None:
    """What run ``path`` holds (its status, or 'files'), None when it holds none."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "status").is_file():
        return (path / "status").read_text(errors="replace").strip() or "unknown status"
    return "files" if any((path / name).exists() for name in RUN_FILES) else None


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


def shipped_targets(group: str) -> dict:
    """option -> ``_target_`` of every option of config group ``group`` that advbench ships."""
    targets = {}
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
        if target:
            targets[path.stem] = target
    return targets


def labels(dataset: str, model_target: str, training: str, attack: str, choices: dict, model_name=None,
           module_target=None) -> dict:
    """What ran, by name: the group choices, except where an override replaced what a choice builds
    (``dataset.name``, ``model._target_``, ``attack.name``); a model option that builds many models by name
    says which (``torchvision-resnet18``), and a user's module its class (``model=module``: ``MyNet``)."""
    model_choice, attack_choice = choices.get("model"), choices.get("attack")
    model = model_choice if shipped_targets("model").get(model_choice) == model_target else str(
        model_target).rsplit(".", 1)[-1]
    if module_target:
        model = str(module_target).rsplit(".", 1)[-1]
    elif model_name:
        model = f"{model}-{model_name}"
    # fgsm_rs is FGSM from a random start: the choice says more than the name, unless the name was overridden
    attack = attack_choice if attack_choice and attack_choice.split("_")[0] == attack else attack
    return {"dataset": dataset, "model": model, "training": training, "attack": attack}


def run_dir(resume, job, checkpoint, seed, timestamp, dataset, model_target, training, attack, eps,
            model_choice, attack_choice, model_name=None, module_target=None) -> str:
    """``hydra.run.dir``: the directory being resumed; else a fresh outputs/<what ran>/<timestamp>."""
    rank = int(os.environ.get("RANK", 0))
    if rank > 0:  # torchrun: only rank 0 writes to the run directory; the others get scratch space
        return os.path.join(tempfile.gettempdir(), f"advbench-rank{rank}-{os.getppid()}")
    if resume is not None and str(resume) != "auto":
        return str(resume)
    job = getattr(job, "value", job)  # the job (train, eval, saliency): the schema hands the resolver an enum
    if job in ("eval", "saliency"):
        parts = [p for p in str(checkpoint).replace("\\", "/").split("/") if p and p not in (".", "..")]
        parts = [p for p in parts if not p.endswith(".pt")][-2:]  # the run's directory names, not the file
        name = f"{job}_" + ("_".join(parts) or "checkpoint")
    else:
        enum = lambda v: str(getattr(v, "value", v))  # noqa: E731
        ran = labels(dataset, model_target, enum(training), enum(attack),
                     {"model": model_choice, "attack": attack_choice}, model_name, module_target)
        name = "_".join([*ran.values(), f"eps{eps}", f"seed{seed}"])
    return claim(f"outputs/{short(name)}/{timestamp}")


def sweep_dir(timestamp) -> str:
    """``hydra.sweep.dir``: a fresh multirun/<timestamp> (two sweeps started in the same second get two)."""
    return claim(f"multirun/{timestamp}")


def sweep_subdir(override_dirname: str, seed) -> str:
    """A job's directory below the sweep: its overrides (path-safe, shortened), then ``seed=<seed>``."""
    return f"{short(override_dirname)}/seed={seed}" if override_dirname else f"seed={seed}"


def hydra_subdir(resume) -> None:
    """Hydra's own config folder: none. Hydra writes it before the task starts, into a directory that may be
    another run's; advbench writes .hydra/ (a resumed run: .hydra_resume/) itself once the directory is its own."""
    return None
