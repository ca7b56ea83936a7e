"""Attacks built in one place: a table of attack kinds (what each name fixes, its default step), and ``Attack``,
the configured attack that the training modes, the evaluation, the guard, the sanity checks and the API call."""
import re
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Callable

import torch

from advbench.attacks.apgd import apgd
from advbench.attacks.fab import fab_targeted
from advbench.attacks.pgd import pgd
from advbench.attacks.reference import reference_autoattack
from advbench.attacks.square import square, square_rows
from advbench.attacks.threats import THREATS
from advbench.eps import check_budget, parse_eps
from advbench.errors import AdvbenchError
from advbench.tasks import Task, default_task


def _run_pgd(a, model, x, targets, threat, objective):
    objective = objective or a.task.objective(a.loss, weights=a.terms, steps=a.steps)
    goal, descend = None, a.descend
    if a.targeted:  # classification: towards a random wrong class
        goal, descend = a.task.random_wrong, True
    elif a.goal != "truth":
        goal = partial(a.task.goal, a.goal, a.relabel)
    return pgd(model, x, targets, threat, a.steps, a.task, objective, a.random_start, a.restarts, goal, descend,
               a.bn_mode, (a.task.check_terms(a.terms) if a.terms else {}) if a.normalize_terms else None)


def _run_apgd(a, model, x, targets, threat, objective):
    return apgd(model, x, targets, threat, a.task, a.steps, a.loss, a.targeted, a.n_targets, a.restarts, a.bn_mode,
                a.eot)


def _run_fab(a, model, x, targets, threat, objective):
    return fab_targeted(model, x, targets, a.norm, a.eps, a.n_targets, a.steps, a.restarts, bn_mode=a.bn_mode)


def _run_square(a, model, x, targets, threat, objective):
    return square(model, x, targets, a.norm, a.eps, n_queries=a.steps, restarts=a.restarts, bn_mode=a.bn_mode)


def _run_reference(a, model, x, targets, threat, objective):
    return reference_autoattack(model, x, targets, a.norm, a.eps, seed=int(torch.initial_seed()) % 2**31,
                                bn_mode=a.bn_mode)


@dataclass(frozen=True)
class Kind:
    """What an attack name fixes (None: configurable), its default step size ``alpha(eps, steps, start)``, the
    loop that runs it, whether it reads logits (a classifier's margins) rather than the task's loss, and
    ``rows(attack, model, x, batch)``: how many examples it takes at once where an evaluation's batch is
    ``batch`` (None: ``batch``)."""

    norm: str | None
    steps: int | None
    random_start: bool | None
    alpha: Callable
    run: Callable
    paper: str
    logits: bool = False
    rows: Callable | None = None


KINDS = {
    "fgsm": Kind("linf", 1, None, lambda eps, steps, start: 1.25 * eps if start else eps, _run_pgd,  # Fast-AT
                 "FGSM (Goodfellow et al. 2015), Linf; from a random start: Wong et al. 2020"),
    "fgm": Kind("l2", 1, False, lambda eps, steps, start: eps, _run_pgd, "FGM (Miyato et al. 2017), L2"),
    "pgd": Kind(None, None, None, lambda eps, steps, start: 2.5 * eps / steps, _run_pgd,  # crosses the ball and back
                "PGD (Madry et al. 2018), Linf or L2"),
    "apgd": Kind(None, None, True, lambda eps, steps, start: 2 * eps, _run_apgd,  # its adaptive schedule's first
                 "APGD (Croce & Hein 2020), Linf or L2"),
    "fab": Kind(None, None, True, lambda eps, steps, start: eps, _run_fab,
                "FAB-T (Croce & Hein 2020, targeted), Linf or L2", logits=True),
    "square": Kind(None, None, True, lambda eps, steps, start: eps, _run_square,  # steps: queries
                   "Square (Andriushchenko et al. 2020), Linf or L2, score-based", logits=True,
                   rows=lambda a, model, x, batch: square_rows(model, x, a.norm, batch, a.bn_mode)),
    "autoattack_reference": Kind(None, None, True, lambda eps, steps, start: eps, _run_reference,
                                 "standard AutoAttack by its authors' code (pyautoattack), Linf or L2", logits=True),
}
EMBEDDING_KINDS = ("fgm", "fgsm", "pgd")  # what an embedding attack can be: untargeted, one restart


@dataclass
class Attack:
    """A configured attack; ``attack(model, x, targets)`` returns adversarial points of ``x`` in the task's
    attack space (pixels in [0,1], or embeddings for text)."""

    name: str
    norm: str
    eps: float
    alpha: float
    steps: int = 1
    random_start: bool = False
    restarts: int = 1
    targeted: bool = False
    bn_mode: str = "eval"
    loss: str = "ce"  # apgd: ce | dlr
    n_targets: int = 9  # apgd targeted: how many of the top wrong classes to try
    target: str = "input"  # input | embedding (text: the embedding output) | embedding_weights (training only)
    terms: dict | None = None  # the loss terms ascended, with weights (detection: box, obj, cls); None: all, 1
    goal: str = "truth"  # truth | predictions | empty: the targets the objective is taken against
    relabel: str = "none"  # none | ml | ll: goal predictions relabeled to their most / least likely other class
    descend: bool = False  # move towards the goal (TOG vanishing, mislabeling) rather than away from it
    normalize_terms: bool = False  # each term's gradient scaled to unit norm before the weighted sum
    eot: int = 1  # apgd: gradients averaged over this many forward passes (randomized defenses)
    task: Task = field(default_factory=default_task, repr=False, compare=False)  # a classifier's, by default
    _in_box: bool = field(default=False, init=False, repr=False, compare=False)  # inputs seen in [0,1] once

    def __call__(self, model, x, targets, objective=None):
        if not self._in_box and self.task.perturbs == "input" and torch.is_tensor(x):
            self._check_box(x)
        view, point = self.task.view(model, x)
        threat = THREATS[self.norm](self.eps, self.alpha, box=self.task.perturbs == "input")
        x_adv = KINDS[self.name].run(self, view, point, targets, threat, objective)
        return self.task.finish(view, x_adv)

    def _check_box(self, x: torch.Tensor) -> None:
        """The first call's inputs are in [0,1] (one synchronization per attack; the projection would clamp others
        into the box silently, far outside eps)."""
        if x.is_floating_point() and (x.min() < 0 or x.max() > 1):
            raise AdvbenchError(f"attack {self.name}: inputs range over [{x.min().item():.3g}, {x.max().item():.3g}]; "
                                "advbench attacks [0,1] images, with normalization as the model's first layer "
                                "(advbench.models.Normalize(mean, std)), so eps is in pixel units")
        self._in_box = True

    def outputs(self, model, x, x_adv):
        """The model's outputs at this attack's result ``x_adv`` for clean inputs ``x`` (no grad, eval mode)."""
        return self.task.predict(self.task.view(model, x)[0], x_adv)

    def rows(self, model, x, batch: int) -> int:
        """How many examples this attack takes at once where an evaluation's batch is ``batch`` (``x``: one of
        them, on the model's device)."""
        rows = KINDS[self.name].rows
        return batch if rows is None else rows(self, *self.task.view(model, x), batch)

    def scaled(self, factor: float) -> "Attack":
        """The same attack with eps and step scaled by ``factor`` (eps warm-up)."""
        return replace(self, eps=self.eps * factor, alpha=self.alpha * factor)

    def settings(self) -> dict:
        """The attack's settings, as results.json records them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "task" and f.init}


def make_attack(name: str, norm: str | None = None, eps: float = 0.0, steps: int | None = None,
                random_start: bool | None = None, alpha: float | None = None, task: Task | None = None,
                **settings) -> Attack:
    """An Attack of kind ``name`` with what the kind fixes filled in and its default step unless ``alpha``."""
    kind = KINDS[name]
    norm = kind.norm or norm or "linf"
    steps = kind.steps or steps or 1
    random_start = kind.random_start if kind.random_start is not None else bool(random_start)
    alpha = kind.alpha(eps, steps, random_start) if alpha is None else alpha
    return Attack(name, norm, eps, alpha, steps, random_start, task=task or default_task(), **settings)


_TERM = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]{1,3})?)\s*\*\s*)?([a-z_]+)\s*$")


def parse_terms(value) -> dict | None:
    """attack.terms: a mapping {term: weight}, or text such as ``obj``, ``box+cls`` or ``0.5*box+obj`` (text
    replaces a preset's terms on the command line, where a mapping would merge into them); None: every term."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        pairs = [_TERM.match(part) for part in value.split("+")]
        if not all(pairs):
            raise AdvbenchError(f"attack.terms={value!r}: expected term names joined by +, each with an optional "
                                "weight (obj, box+cls, 0.5*box+obj), or a mapping {box: 1, obj: 1}")
        return {m.group(2): float(m.group(1) or 1.0) for m in pairs}
    try:
        return {str(k): float(v) for k, v in dict(value).items()}
    except (TypeError, ValueError):
        raise AdvbenchError(f"attack.terms={value}: expected a mapping of term names to numbers") from None


def _target(spec, name: str, task: Task) -> str:
    """What the attack perturbs, checked against the task: pixels of images, embeddings of text."""
    target = str(spec.target) if spec.target is not None else task.perturbs
    if task.perturbs == "input" and target != "input":
        raise AdvbenchError(f"attack.target={target} needs a text model (dataset=fortunes, text_csv or "
                            "synthetic_text with model=textcnn or transformer); image attacks use attack.target=input")
    if task.perturbs != "input" and target == "input":
        raise AdvbenchError(f"attack.target=input on {task.name} data: token ids cannot be perturbed; use "
                            "attack.target=embedding or embedding_weights")
    if target != "input" and (name not in EMBEDDING_KINDS or spec.restarts != 1 or spec.targeted):
        raise AdvbenchError(f"attack.target={target} takes attack=fgm, fgsm or pgd, untargeted, with one restart")
    if target == "embedding_weights" and not (name == "fgm" or (name == "pgd" and str(spec.norm) == "l2")):
        raise AdvbenchError(f"attack.target=embedding_weights takes attack=fgm, or pgd with attack.norm=l2 (the NLP "
                            f"recipe's Frobenius-norm steps); attack={name} attack.norm={spec.norm} given")
    return target


def _check_objective(spec, name: str, task: Task, terms: dict | None) -> None:
    """The loss and goal the attack will ask of ``task``, asked now: an attack that does not fit the task (a
    segmentation loss on a detector) must fail at the config, not after training, nor pass unnoticed when no
    example was correct enough to be attacked."""
    if KINDS[name].logits:  # FAB, Square and the reference read the logits, never the task's objective
        return
    targeted = bool(spec.targeted)
    if targeted and type(task).random_wrong is Task.random_wrong:  # the task draws no random wrong goal
        raise AdvbenchError(f"attack.targeted=true moves towards a random wrong class; {task.name} has none: use "
                            "attack.goal (detection: predictions with attack.relabel, or empty)")
    if targeted and name == "apgd" and not task.ranks_wrong:
        raise AdvbenchError(f"attack.targeted=true with attack=apgd (APGD-T) ranks a classifier's wrong classes; "
                            f"{task.name} takes untargeted apgd")
    # APGD-T builds its targeted objective per target class: the loss name is what can be checked here.
    task.objective(str(spec.loss), weights=None if name == "apgd" else terms, steps=int(spec.steps))


def build_attack(spec, run_eps, task: Task | None = None) -> Attack | None:
    """Build an Attack from an attack config for ``task``; its eps falls back to the run's top-level ``eps``."""
    task = task or default_task()
    name = str(spec.name)
    if name == "none":
        return None
    if name not in KINDS:
        raise AdvbenchError(f"attack.name={name}: expected one of none, {', '.join(KINDS)}")
    if str(spec.norm) not in THREATS:
        raise AdvbenchError(f"attack.norm={spec.norm}: expected one of {', '.join(THREATS)}")
    kind = KINDS[name]
    if kind.logits and not (task.logits and task.perturbs == "input"):
        raise AdvbenchError(f"attack={name} reads a classifier's logits on [0,1] inputs; {task.name} takes pgd, "
                            "fgsm, fgm or apgd")
    if kind.norm and str(spec.norm) != kind.norm:
        raise AdvbenchError(f"attack.norm={spec.norm} does not apply to {name}, which is {kind.norm} by "
                            "definition; use pgd for other norms")
    if name == "square" and str(spec.bn_mode) == "train":  # its queries take shrinking, changing sets of rows
        raise AdvbenchError("attack.bn_mode=train does not apply to square: it compares an example's margins over "
                            "queries of changing sets of rows, and batch norm in train mode makes them depend on "
                            "the rows beside it; use attack.bn_mode=eval")
    target = _target(spec, name, task)
    key = "eps" if spec.eps is None else f"attack {name} eps"
    eps = parse_eps(run_eps if spec.eps is None else spec.eps, key)
    if target == "input":  # embeddings have no [0,1] box, so no bound on eps
        check_budget(eps, kind.norm or str(spec.norm), key)
    if int(spec.steps) < 1 or spec.restarts < 1:
        raise AdvbenchError(f"attack {name}: steps and restarts must be >= 1, got {spec.steps} and {spec.restarts}")
    alpha = None if spec.alpha is None else parse_eps(spec.alpha, f"attack {name} alpha")
    terms = parse_terms(spec.get("terms"))
    task.check_terms(terms)  # an unknown term name is an error here, never a silent zero
    if spec.get("goal", "truth") != "truth" and not task.crafts_goals:
        raise AdvbenchError(f"attack.goal={spec.goal} crafts detection targets; {task.name} takes attack.goal=truth "
                            "(use attack.targeted for a random wrong class)")
    _check_objective(spec, name, task, terms)
    random_start = bool(spec.random_start) and target != "embedding_weights"  # the matrix recipe starts at W
    return make_attack(name, str(spec.norm), eps, int(spec.steps), random_start, alpha, task,
                       restarts=int(spec.restarts), targeted=bool(spec.targeted), bn_mode=str(spec.bn_mode),
                       loss=str(spec.loss), n_targets=int(spec.n_targets), target=target, terms=terms,
                       goal=str(spec.get("goal", "truth")), relabel=str(spec.get("relabel", "none")),
                       descend=bool(spec.get("descend", False)),
                       normalize_terms=bool(spec.get("normalize_terms", False)), eot=int(spec.get("eot", 1)))

