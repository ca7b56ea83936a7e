"""The Python API: attacks and robust evaluation for your own training and validation loops.

    import advbench
    pgd = advbench.attack("pgd", eps="8/255", steps=10)
    x_adv = pgd(model, x, y)                      # model in any mode, inside no_grad or not
    advbench.evaluate(model, val_loader, {"pgd": pgd})
"""
from pathlib import Path

import torch
from omegaconf import OmegaConf

from advbench.attacks.spec import Attack, build_attack
from advbench.config import AttackConf
from advbench.errors import AdvbenchError
from advbench.evaluation.evaluator import Evaluator
from advbench.tasks import TASKS, Classification

ATTACK_CONF = Path(__file__).resolve().parent / "conf" / "attack"


def attack(spec="pgd", eps="8/255", task=None, **overrides) -> Attack:
    """An attack by name (an option of conf/attack/: fgsm, fgsm_rs, pgd, fgm, apgd) or from a config mapping,
    with any AttackConf field overridden, e.g. ``attack("pgd", eps=0.1, steps=20, norm="l2")``."""
    if isinstance(spec, str):
        path = ATTACK_CONF / f"{spec}.yaml"
        options = sorted(p.stem for p in ATTACK_CONF.glob("*.yaml") if p.stem != "none")
        if not path.is_file() or spec == "none":
            raise AdvbenchError(f"attack={spec!r} is unknown: expected one of {', '.join(options)}")
        spec = OmegaConf.load(path)
    try:
        conf = OmegaConf.merge(OmegaConf.structured(AttackConf), spec, overrides)
    except Exception as err:  # OmegaConf's validation: an unknown key or a wrong type
        raise AdvbenchError(f"attack: {' '.join(str(err).split())[:200]}") from None
    conf = OmegaConf.create(OmegaConf.to_container(conf, enum_to_str=True))
    return build_attack(conf, str(eps), _task(task))


def _task(task):
    """A Task, or one by name (classification, detection); classification by default."""
    if task is None or isinstance(task, str):
        name = task or "classification"
        if name not in TASKS:
            raise AdvbenchError(f"task={name!r} is unknown: expected one of {', '.join(TASKS)}")
        return TASKS[name](0)
    return task


def evaluate(model, loader, attacks: dict, device=None, amp: str = "off", cascade: bool = True) -> dict:
    """Clean and robust accuracy of ``model`` over ``loader``'s (x, y) batches (images in [0,1]) under
    ``attacks`` (name -> Attack); the per-example worst case over attacks is ``robust_acc``.

    Works from inside ``torch.no_grad()`` and on a model in train mode; the model's modes and its parameters'
    gradients are left as they were.
    """
    device = torch.device(device) if device else next(model.parameters()).device
    task, flags = Classification(0), []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        flags.append(Evaluator(task, device, amp, len(y), cascade).local_flags(model, x, y, attacks, cascade).flags)
    if not flags:
        raise AdvbenchError("evaluate: the loader yielded no batches")
    return task.summarize({name: torch.cat([f[name] for f in flags]) for name in flags[0]})
