"""Run directories: named after what ran, short enough for any file system, and never shared by two runs."""
import hashlib
import os
import tempfile
from pathlib import Path

import yaml

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
    if int(os.environ.get("RANK", 0)) > 0:  # torchrun: only rank 0 writes to the run directory
        return rank_scratch()
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


def rank_scratch() -> str:
    """Where Hydra puts a torchrun rank other than 0 (its log only, and removed when the run ends)."""
    return os.path.join(tempfile.gettempdir(), f"advbench-rank{os.environ['RANK']}-{os.getppid()}")


def sweep_dir(timestamp) -> str:
    """``hydra.sweep.dir``: a fresh multirun/<timestamp> (two sweeps started in the same second get two)."""
    return claim(f"multirun/{timestamp}")


def sweep_subdir(override_dirname: str, seed) -> str:
    """A job's directory below the sweep: its overrides (path-safe, shortened), then ``seed=<seed>``."""
    return f"{short(override_dirname)}/seed={seed}" if override_dirname else f"seed={seed}"

