"""What a problem (classification, text, detection, segmentation) owns, and nothing else does.

Attack loops, training modes and evaluation call a task's methods and never test a modality or compute an
argmax themselves: a new problem is a new task class, not edits across the core.
"""
from abc import ABC, abstractmethod
from functools import reduce
from operator import add

import torch

from advbench.errors import AdvbenchError


def worst_case(flags: dict) -> torch.Tensor:
    """Per example: correct clean and after every attack."""
    worst = flags["clean"].clone()
    for f in flags.values():
        worst &= f
    return worst


class Task(ABC):
    """A problem's targets, named loss terms, "still correct", metrics and what an attack perturbs.

    Targets of a batch are held however the task likes (a label tensor, a list of per-image dicts); the core only
    passes them back to the task's own methods. A task is made from the config before any data is read
    (``configured``), so that every attack and mode is checked against it first; ``bind`` then gives it the data
    set's classes. This class names every member the core calls: the core never probes for others.
    """

    key = "task"  # its name in the registry (tasks/registry.py), set by ``register``
    name = "task"  # how messages and reports name the problem
    models: tuple = ()  # the shipped model options (conf/model/) that solve this task
    classes: list = []  # class names, index = label (set per data set)
    terms: tuple = ()  # the named terms of ``loss``
    metrics: tuple = ()  # (clean key, robust key) of ``summarize``; the robust one is the headline
    modes: tuple = ()  # the training modes this task supports
    perturbs = "input"  # what attacks move: "input" (pixels in [0,1]) or "embedding"
    logits = False  # outputs are a classifier's logits (what FAB and Square read)
    # The model maps a batch tensor to outputs with one row per example, whatever the batch's other rows: with
    # ``compile`` on, a batch is padded to a fixed size and its outputs cut back (runtime/compiled.py).
    pads_batches = True
    # Embedding-space attacks exist only as the training recipe defines them (their eps is in embedding units):
    # such tasks validate and evaluate under the run's own attack.
    evaluates_with_training_attack = False
    # Such tasks also evaluate under the run's attack as PGD with this many steps, same eps and norm (0: not).
    own_attack_steps = 0
    draws_examples = True  # eval.save_examples can draw its inputs
    scores_training = True  # the epoch log reports training accuracy (cheap for classification)
    draws_saliency = True  # job=saliency can draw this task's gradient maps (write_saliency)
    ranks_wrong = False  # APGD-T can rank this task's wrong classes (ranked_wrong)
    crafts_goals = False  # attack.goal other than truth: targets built from the predictions (goal)

    def __init__(self, n_classes: int = 0, classes: list | None = None):
        self.n_classes = n_classes  # 0 until ``bind``: an attack called from Python may never know it
        self.classes = classes or [str(i) for i in range(n_classes)]

    @classmethod
    def configured(cls, evaluation=None) -> "Task":
        """The task before any data is read, with the eval config's settings it reads (None: the defaults)."""
        return cls()

    def bind(self, data) -> "Task":
        """This task for a loaded data set: its classes (and what else the task reads from it); returns self."""
        self.n_classes, self.classes = data.n_classes, list(data.classes)
        return self

    # --- the data a task accepts, checked as it is loaded -------------------------------------------------------
    @classmethod
    def check_training_targets(cls, targets, dataset: str) -> None:
        """Refuse a training split this task cannot learn from (one line naming the data set)."""
        present = len(torch.unique(targets))
        if present < 2:
            raise AdvbenchError(f"dataset={dataset}: the training split holds {present} class; a classifier needs "
                                "at least 2 (check dataset.categories, the label column or dataset.n_train)")

    @classmethod
    def class_count(cls, targets) -> int:
        """The number of classes the targets show, where a data set names none: the largest label + 1."""
        return int(targets.max()) + 1 if len(targets) else 0

    # --- targets ----------------------------------------------------------------------------------------------
    def index(self, targets, idx):
        """The targets of the examples ``idx`` (a tensor of indices)."""
        return targets[idx]

    def to(self, targets, device):
        """The targets on ``device``."""
        return targets.to(device, non_blocking=True)

    def detach(self, targets):
        """The targets as constants (copied out of inference mode if needed)."""
        return targets.clone() if targets.is_inference() else targets.detach()

    def count(self, targets) -> int:
        """How many examples the targets describe."""
        return len(targets)

    def trim(self, x):
        """A batch's inputs cut to what its examples use (unchanged by default)."""
        return x

    def augment(self, x, targets, generator):
        """A training batch augmented, targets moved along (dataset.augment): random crop after 4-pixel zero
        padding, and random horizontal flip."""
        from advbench.data.loaders import random_crop_flip
        return random_crop_flip(x, generator), targets

    # --- outputs and losses ------------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, outputs, targets) -> dict:
        """{term: per-example loss} of the model's outputs."""

    def mean_terms(self, outputs, targets) -> dict:
        """{term: batch mean}: what a training step sums and the epoch log reports."""
        return {name: term.mean() for name, term in self.loss(outputs, targets).items()}

    def mean_loss(self, outputs, targets) -> torch.Tensor:
        """The training loss of a batch: the terms' means, summed."""
        return reduce(add, self.mean_terms(outputs, targets).values())

    def total_loss(self, outputs, targets, reduce_: bool) -> torch.Tensor:
        """The training loss (``reduce_``) or its per-example values: the sum of the terms."""
        if reduce_:
            return self.mean_loss(outputs, targets)
        return sum(self.loss(outputs, targets).values())

    def objective(self, name: str = "loss", weights: dict | None = None, **kwargs):
        """What an attack ascends: ``fn(outputs, targets) -> per-example loss``; ``loss`` is the weighted sum of
        the task's terms (all terms, weight 1, by default). ``ce``, the schema's default attack.loss, names it too:
        a task with no cross-entropy of its own must not fail on a default it never chose."""
        if name not in ("loss", "ce"):
            raise AdvbenchError(f"attack.loss={name} is not defined for {self.name}: expected loss")
        weights = self.check_terms(weights)

        def weighted(outputs, targets):
            terms = self.loss(outputs, targets)
            return sum(w * terms[t] for t, w in weights.items())
        return weighted

    def random_wrong(self, model, x, targets):
        """The goal of a targeted attack (``attack.targeted``); only classification tasks define one."""
        raise AdvbenchError(f"attack.targeted=true moves towards a random wrong class: a classification attack; "
                            f"for {self.name} use attack.goal")

    def check_terms(self, weights: dict | None) -> dict:
        """``weights`` (term -> weight), every name one of the task's terms; None means each term once."""
        weights = dict(weights) if weights else {t: 1.0 for t in self.terms}
        unknown = sorted(set(weights) - set(self.terms))
        if unknown:
            raise AdvbenchError(f"attack.terms: {', '.join(unknown)} is not a loss term of {self.name}: expected "
                                f"{', '.join(self.terms)}")
        return weights

    @abstractmethod
    def correct(self, outputs, targets) -> torch.Tensor:
        """Per example: still counts as correct (the restarts attack only these, and the cascade too where the
        metric splits over examples; a task that keeps records is attacked whole)."""

    def new_records(self, attacks: list, n: int, cascade: bool = True):
        """What an evaluation keeps per example beyond the flags (None: nothing, the flags say it all)."""
        return None

    @abstractmethod
    def summarize(self, flags: dict, records=None) -> dict:
        """The evaluation's numbers from per-example flags (``clean`` and one entry per attack) and records."""

    def metric_definitions(self) -> dict:
        """How summarize's numbers are computed, where a name alone does not say (results.json, summary.md)."""
        return {}

    # --- what an attack sees ----------------------------------------------------------------------------------
    def view(self, model, x):
        """(the model an attack differentiates, the point it perturbs): the model and its input by default."""
        return model, x

    def finish(self, view_model, x_adv):
        """The attack's result in ``view`` space, as the task keeps it (unchanged by default)."""
        return x_adv

    def forward_perturbed(self, model, x, x_adv):
        """Outputs at an attack's point ``x_adv`` (in ``view`` space), differentiable for a training update."""
        return model(x_adv)

    def forward_pair(self, model, x, x_adv):
        """Clean and adversarial outputs in one forward pass, so that batch norm sees the mixed batch."""
        return model(torch.cat([x, x_adv])).chunk(2)

    def same_outputs(self, a, b) -> bool:
        """Whether two forward passes agree (a random forward pass needs EOT attacks)."""
        return torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)

    def probabilities(self, outputs) -> bool:
        """Whether the outputs look like probabilities where logits belong (a masked gradient)."""
        return False

    # --- abilities a task may have: declared here so that the core never probes for them -------------------
    def labels(self, outputs) -> list:
        """The predicted class of each example (tasks whose outputs are class scores)."""
        raise AdvbenchError(f"{self.name} predicts no single class per example")

    def ranked_wrong(self, model, x, targets, n: int):
        """The ``n`` most likely wrong classes of each example, most likely first (APGD-T's targets)."""
        raise AdvbenchError(f"APGD-T ranks a classifier's wrong classes; {self.name} has none")

    def goal(self, kind: str, relabel: str, model, x, targets):
        """The targets an attack with ``attack.goal=kind`` moves towards or away from."""
        raise AdvbenchError(f"attack.goal={kind} crafts detection targets; {self.name} takes attack.goal=truth")

    def pinned(self, x) -> torch.Tensor:
        """Per position of ``x``: held at its clean value by every attack (none by default)."""
        return torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)

    def plot_examples(self, x, x_adv, targets, clean_outputs, adv_outputs, path, notes=None, title: str = "") -> None:
        """eval.save_examples: clean and adversarial examples side by side, with the predictions, in ``path``."""
        raise AdvbenchError(f"eval.save_examples: {self.name} draws no examples")

    def write_saliency(self, model, test, attack, mode, settings, device, out) -> tuple:
        """job=saliency: gradient maps of the first test examples; (files, mean |gradient| per map)."""
        raise AdvbenchError(f"job=saliency draws no maps for {self.name}")

    def predict(self, model, x):
        """Outputs of ``model`` (in its view space) without grad, in eval mode; the caller's modes restored."""
        from advbench.attacks.gradients import preserved_modes
        with preserved_modes(model), torch.no_grad():
            model.eval()
            return model(x)
