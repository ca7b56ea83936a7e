"""What every training mode shares: the ``Batch`` a step works with, the ``Step`` it returns, named loss
``Term``s, and the ``Mode`` base class (settings, accepted attacks, passes over the data).

A step gets a ``Batch``: the model (DDP-wrapped when distributed), the bare module attacks use, the task, the
batch, the attack (bound to the bare module, eps already warmed up), the run's autocast and ``update(loss)``.
``terms`` names a mode's loss terms once; the step sums them, and saliency draws each one's input gradient.
``advbench.losses`` runs these same steps in other loops (Lightning, Accelerate) with an ``update`` that leaves a
lone loss to the caller's backward; so a step backpropagates only through ``update``, and a recipe that needs
more passes (FreeLB, the embedding-matrix recipe) runs them in its ``after_backward`` with ``backward``.
"""
from dataclasses import dataclass
from functools import reduce
from operator import add
from typing import Callable

import torch

from advbench.errors import AdvbenchError


@dataclass
class Batch:
    """What a step works with."""

    model: torch.nn.Module
    net: torch.nn.Module
    task: object
    x: torch.Tensor
    y: object
    attack: Callable  # attack(x, y, objective=None) -> x_adv, on ``net``
    eps: float  # the attack's eps at this step (warm-up included)
    autocast: Callable  # a fresh autocast context for the run's amp setting
    update: Callable  # update(loss, after_backward=None): backward, clip, optimizer and scheduler step
    backward: Callable  # backward(loss): an extra (scaled) backward pass inside ``after_backward``


@dataclass
class Step:
    """A step's loss, the outputs it saw (clean, adversarial; None where it had none) and the task's loss terms
    (batch means) where the step trained on one kind of output."""

    loss: torch.Tensor
    clean: object = None
    adv: object = None
    terms: dict | None = None


@dataclass
class Term:
    """A named loss term: ``fn(clean outputs, adversarial outputs, reduce)``, whose input gradient saliency takes
    at the clean or the adversarial point (``at``)."""

    fn: Callable
    at: str


def total(values) -> torch.Tensor:
    """The terms' sum, in their order."""
    return reduce(add, values)


def mean_of(per_example: torch.Tensor, reduce_: bool) -> torch.Tensor:
    """A term's batch mean (the training loss) or its per-example values (saliency)."""
    return per_example.mean() if reduce_ else per_example


class Mode:
    """A training mode: its settings, the attacks it accepts, how many passes ``epochs`` means, its step."""

    name = "mode"
    accepts: tuple | None = None  # attack kinds; None: any, unused
    adversarial = True  # whether the step trains on adversarial examples (and reports their accuracy)
    updates_per_batch = 1

    def __init__(self, settings):
        self.settings = settings

    def check(self, attack) -> None:
        """Refuse an attack this mode does not support, in one line."""
        name = attack.name if attack else "none"
        if self.accepts is not None and name not in self.accepts:
            accepted = {"fgsm": "fgsm, fgsm_rs"}
            raise AdvbenchError(f"training={self.name} accepts attack="
                                f"{', '.join(accepted.get(a, a) for a in self.accepts)}; attack={name} given")

    def passes(self, epochs: int) -> int:
        """Passes over the data that ``epochs`` means."""
        return epochs

    def start_epoch(self) -> None:
        """Reset what a mode carries from batch to batch."""

    def terms(self, task, y) -> dict:
        """The loss's named terms, where it has several (saliency draws each)."""
        return {}

    def step(self, b: Batch) -> Step:
        raise NotImplementedError

    def terms_step(self, b: Batch, objective=None) -> Step:
        """Attack (ascending ``objective``, default the task's loss), one forward over the clean and adversarial
        halves, the sum of the mode's terms, the update."""
        with b.autocast():
            x_adv = b.attack(b.x, b.y, objective)
            clean, adv = b.task.forward_pair(b.model, b.x, x_adv)
            loss = total(t.fn(clean, adv, True) for t in self.terms(b.task, b.y).values())
        b.update(loss)
        return Step(loss, clean, adv)
