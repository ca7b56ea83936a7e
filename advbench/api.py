"""The Python API: attacks and robust evaluation for your own training and validation loops.

    import advbench
    pgd = advbench.attack("pgd", eps="8/255", steps=10)
    x_adv = pgd(model, x, y)                      # model in any mode, inside no_grad or not
    advbench.evaluate(model, val_loader, {"pgd": pgd})
    advbench.evaluate(model, test_loader, "autoattack", eps="8/255")   # standard AutoAttack, with sanity checks
    advbench.evaluate(text_model, loader, "pgd20", eps=0.5, task="text")  # token ids: attacks on the embeddings
"""
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from advbench.attacks.spec import Attack, build_attack
from advbench.config import AttackConf, SanityConf
from advbench.errors import AdvbenchError
from advbench.evaluation.batch import auto_batch_size
from advbench.evaluation.evaluator import Evaluator
from advbench.tasks import default_task, task_class

ATTACK_CONF = Path(__file__).resolve().parent / "conf" / "attack"
EVAL_CONF = Path(__file__).resolve().parent / "conf" / "eval"


def attack(spec="pgd", eps="8/255", task=None, **overrides) -> Attack:
    """An attack by name (an option of conf/attack/: fgsm, fgsm_rs, pgd, fgm, apgd, fab, square, the detection and
    segmentation presets) or from a config mapping, with any AttackConf field overridden, e.g.
    ``attack("pgd", eps=0.1, steps=20, norm="l2")``; ``task`` names the task ("detection", "segmentation")."""
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
    if task is None:
        return default_task()
    return task_class(task)() if isinstance(task, str) else task


def evaluate(model, loader, attacks="autoattack", eps="8/255", device=None, amp: str = "off", cascade: bool = True,
             normalization=None, sanity: bool = True, task=None) -> dict:
    """Clean and robust accuracy of ``model`` over ``loader``'s batches under ``attacks``: a dict name -> Attack, or
    an evaluation preset's name (an option of conf/eval/: autoattack, autoattack_fast, pgd20, ...) built at ``eps``.

    Batches are (x, y, ...) tuples or dicts (``image``/``images``/``x``/``input`` and ``label``/``labels``/``y``/
    ``target``); images must be in [0,1] (an error otherwise, never a silent clamp). A model that expects normalized
    inputs gets ``normalization=(mean, std)``, placed in front of it. Returns ``clean_acc``, ``robust_acc`` (the
    per-example worst case), ``robust_acc_by_attack`` (cumulative under the cascade), ``n_examples``, ``flags``
    (per-example booleans: clean, each attack, worst case) and, with ``sanity``, the sanity checks of a CLI
    evaluation. Works inside ``torch.no_grad()`` and ``torch.inference_mode()``, on a model in train mode; modes,
    buffers and gradients are left as they were. On the CPU a loader's batch is attacked in small blocks
    (``eval.batch_size=auto``'s, evaluation/batch.py).

    ``task`` ("classification" or "text"; None: the task the given Attack objects were built for, else
    classification): with "text" the batches hold token ids, the attacks move the embeddings (a preset is built
    for text; its eps is in embedding units) and no [0,1] check applies. Integer inputs to an image task are
    refused in one line naming ``task="text"``.
    """
    from advbench.evaluation.sanity import sanity_checks
    from advbench.models import Normalize
    from advbench.tasks import worst_case
    if normalization is not None:
        model = torch.nn.Sequential(Normalize(*normalization), model)
    device = torch.device(device) if device else next(model.parameters()).device
    task = _evaluated_task(task, attacks)
    attacks = preset(attacks, eps, task) if isinstance(attacks, str) else attacks
    _check_attacks(attacks, task)
    flags, seen, block = [], [], None
    for batch in loader:
        x, y = _unpack(batch)
        _check_inputs(x, task)
        x, y = x.to(device), y.to(device)
        if not flags:
            _check_labels(model, x, y)
        if block is None:  # on the CPU a loader's batch is attacked in small blocks (evaluation/batch.py)
            block = auto_batch_size(model, tuple(x.shape[1:]), device) if device.type == "cpu" else math.inf
        flags.append(Evaluator(task, device, amp, min(len(y), block), cascade).local_flags(model, x, y, attacks,
                                                                                            cascade).flags)
        if sanity and sum(len(b) for b, _ in seen) < 200:
            seen.append((x, y))
    if not flags:
        raise AdvbenchError("evaluate: the loader yielded no batches")
    flags = {name: torch.cat([f[name] for f in flags]) for name in flags[0]}
    results = task.summarize(flags) | {"flags": {name: f.tolist() for name, f in flags.items()}}
    results["flags"]["worst_case"] = worst_case(flags).tolist()
    if sanity:
        x, y = torch.cat([b for b, _ in seen])[:200], torch.cat([t for _, t in seen])[:200]
        settings = OmegaConf.structured(SanityConf)
        results["sanity"] = sanity_checks(model, x, y, attacks, {k: v[:len(y)] for k, v in flags.items()},
                                          settings, Evaluator(task, device, amp, 500, cascade))
    return results


def preset(name: str, eps="8/255", task=None) -> dict:
    """The attacks of evaluation preset ``name`` (``conf/eval/<name>.yaml``) at budget ``eps``, by name, for
    ``task`` (a Task or its name; classification by default)."""
    path = EVAL_CONF / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in EVAL_CONF.glob("*.yaml"))
        raise AdvbenchError(f"attacks={name!r} is unknown: expected a dict of attacks or one of {', '.join(options)}")
    specs, task = OmegaConf.load(path).attacks, _task(task)
    try:
        return {key: attack(OmegaConf.to_container(spec), eps, task) for key, spec in specs.items()}
    except AdvbenchError as err:
        if task.perturbs == "input":
            raise
        raise AdvbenchError(f"attacks={name!r} on {task.name}: {err} (presets pgd20 and quick fit)") from None


def _evaluated_task(task, attacks):
    """The task ``evaluate`` judges with: ``task`` (a Task or its name), else the one task the given Attack objects
    share, else classification; only classifiers (their outputs logits) are evaluated here."""
    if task is None and isinstance(attacks, dict):
        keys = {a.task.key: a.task for a in attacks.values() if isinstance(a, Attack)}
        task = next(iter(keys.values())) if len(keys) == 1 else None
    task = _task(task)
    if not task.logits:
        raise AdvbenchError(f'evaluate: task="{task.key}" is not a classifier\'s; evaluate takes task="classification" '
                            'or "text" (detection and segmentation: the CLI, job=eval)')
    return task


def _check_attacks(attacks: dict, task) -> None:
    """Each Attack perturbs what the evaluated task's inputs allow (pixels, or the embeddings of token ids)."""
    for name, a in attacks.items():
        if isinstance(a, Attack) and a.task.perturbs != task.perturbs:
            raise AdvbenchError(f"evaluate: attack {name!r} was built for {a.task.name}, the evaluation is "
                                f'{task.name}: build it with advbench.attack(..., task="{task.key}")')


def _check_inputs(x: torch.Tensor, task) -> None:
    """Image tasks take float images in [0,1]; token ids (any integer range) take an embedding task."""
    if task.perturbs != "input":
        if x.is_floating_point():
            raise AdvbenchError(f'evaluate: task="{task.key}" takes integer token ids; the inputs are {x.dtype}')
        return
    if not x.is_floating_point():
        raise AdvbenchError(f"evaluate: the inputs are {x.dtype}, not float images in [0,1]: for token ids pass "
                            'task="text" (the attacks then move the embeddings); for images pass x.float() / 255')
    if x.min() < 0 or x.max() > 1:
        raise AdvbenchError(f"evaluate: inputs range over [{x.min().item():.3g}, {x.max().item():.3g}]; advbench "
                            "attacks [0,1] images: pass raw images and normalization=(mean, std)")


def _check_labels(model, x: torch.Tensor, y) -> None:
    """Labels are class indices below the model's number of outputs (a float label would reach the loss as an
    error; one out of range would count as wrong, silently)."""
    from advbench.attacks.gradients import preserved_modes
    if not torch.is_tensor(y) or y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
        what = f"{y.dtype} shaped {tuple(y.shape)}" if torch.is_tensor(y) else type(y).__name__
        raise AdvbenchError(f"evaluate: the labels are {what}; class indices expected, one per example "
                            "(a torch.long tensor shaped (N,))")
    with preserved_modes(model), torch.no_grad():
        model.eval()  # a probe of the number of classes: one example, nothing updated
        out = model(x[:1])
    width = out.shape[-1] if torch.is_tensor(out) else None  # a model's own output type: its task reads it
    if len(y) and (y.min() < 0 or (width is not None and y.max() >= width)):
        raise AdvbenchError(f"evaluate: labels range over [{y.min().item()}, {y.max().item()}], but the model has "
                            f"{width} outputs: class indices must be in [0, {width - 1}]")


_IMAGE_KEYS, _LABEL_KEYS = ("image", "images", "x", "input", "inputs"), ("label", "labels", "y", "target", "targets")


def _unpack(batch):
    """(images, labels) of a loader's batch: a (x, y, ...) tuple or a dict with named keys."""
    if isinstance(batch, dict):
        x = next((batch[k] for k in _IMAGE_KEYS if k in batch), None)
        y = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        if x is None or y is None:
            raise AdvbenchError(f"evaluate: a batch dict needs an image key ({', '.join(_IMAGE_KEYS)}) and a label "
                                f"key ({', '.join(_LABEL_KEYS)}); it has {', '.join(map(str, batch))}")
        return x, y
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise AdvbenchError("evaluate: batches must be (x, y, ...) tuples or dicts of images and labels")
