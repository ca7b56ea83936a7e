"""The training modes' objectives for your own loop (plain PyTorch, Lightning, Accelerate).

Each function runs one step of advbench's training mode (``advbench/training/modes.py``) on your batch, with the
update left to you, so its numbers are those of advbench's own loop:

    loss = advbench.losses.trades(model, x, y, attack)   # x_adv crafted inside; the attack runs in eval mode
    optimizer.zero_grad(); loss.backward(); optimizer.step()

``adversarial``, ``mixed``, ``trades``, ``mart`` and ``smart`` return the loss for your backward. FreeLB (and mixed
with an attack on the embedding matrix) backpropagates between its ascent steps: it runs its backward passes through
``backward`` (``accelerator.backward``, Lightning's ``manual_backward``) and returns the loss detached, the
gradients accumulated. ``Free`` replays a batch with an optimizer step per replay.

Call them with the model in train mode, as your loop does; each attack switches to its ``bn_mode`` (eval by
default) and back. ``attack`` is an ``advbench.attack(...)``; None takes the recipe's (the table in
docs/bridge.md). Images are in [0,1]; text models take token ids and have ``embedding`` and ``classify``.
"""
from contextlib import nullcontext
from functools import lru_cache
from types import SimpleNamespace

import torch

from advbench.attacks.spec import Attack
from advbench.errors import AdvbenchError
from advbench.runtime.distributed import bare

__all__ = ["adversarial", "mixed", "trades", "mart", "freelb", "smart", "Free"]

# name -> (attack kind, eps, overrides): each recipe's attack when none is given. Images: Linf 8/255 (CIFAR-10's
# budget); text: the L2 ball on the word embeddings of conf/training/freelb.yaml's example (advbench's textcnn).
DEFAULT_ATTACKS = {
    "adversarial": ("pgd", "8/255", {}),  # PGD-10, step 2/255, random start
    "mixed": ("fgsm", "8/255", {}),
    "trades": ("pgd", "8/255", {}),
    "mart": ("pgd", "8/255", {}),
    "freelb": ("pgd", "1.0", {"norm": "l2", "steps": 3, "alpha": 0.3, "task": "text"}),
    "smart": ("pgd", "1.0", {"norm": "l2", "steps": 1, "alpha": 1.0, "task": "text"}),
}


@lru_cache(maxsize=None)
def default_attack(recipe: str) -> Attack:
    """The attack ``recipe`` uses when given none (``DEFAULT_ATTACKS``)."""
    from advbench.api import attack
    kind, eps, overrides = DEFAULT_ATTACKS[recipe]
    return attack(kind, eps, **overrides)


def _mode(name: str, task, attack, **settings):
    """The training mode ``name`` with ``settings``, checked as a config is: its numbers' ranges, that ``task``
    supports it, that it accepts ``attack``."""
    from advbench.checks import _RANGES
    from advbench.training.modes import build_mode
    for key, value in settings.items():
        test, accepted = _RANGES[f"training.{key}"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(value):
            raise AdvbenchError(f"advbench.losses.{name}: {key}={value!r}; expected {accepted}")
    mode = build_mode(SimpleNamespace(name=name, **settings), task)
    mode.check(attack)
    return mode


def _attack(name: str, attack) -> Attack:
    if attack is None:
        return default_attack(name)
    if not isinstance(attack, Attack):
        raise AdvbenchError(f"advbench.losses.{name}: attack must be an advbench.attack(...) or None (the recipe's "
                            f"default); {type(attack).__name__} given")
    return attack


def run_step(mode, model, x, y, attack: Attack | None, eps: float, task, backward=None, update=None):
    """One ``mode.step`` on the batch, as advbench's loop runs it (``training/loop.py``), with your update.

    ``update(loss, after_backward)`` defaults to leaving a lone loss to the caller; a recipe that backpropagates
    between its steps (``after_backward``) gets ``backward(loss)`` and then its own extra passes. ``model`` may be
    wrapped (DDP, Accelerate): attacks and clean predictions use the bare module, as in advbench's loop. Returns
    the Step."""
    from advbench.training.loop import _bound
    from advbench.training.mode import Batch
    if update is None and mode.updates_per_batch > 1:  # each update must be taken inside the step: ``Free``
        raise AdvbenchError(f"training={mode.name} updates {mode.updates_per_batch} times a batch: it needs the "
                            "optimizer (advbench.losses.Free)")
    backward = backward or torch.Tensor.backward

    def deferred(loss, after_backward=None):
        if after_backward is not None:
            backward(loss)
            after_backward()
    net = bare(model)
    return mode.step(Batch(model, net, task, x, y, attack=_bound(attack, net), eps=eps, autocast=nullcontext,
                           update=update or deferred, backward=backward))


def _loss(name: str, model, x, y, attack, backward=None, **settings) -> torch.Tensor:
    attack = _attack(name, attack)
    mode = _mode(name, attack.task, attack, **settings)
    return run_step(mode, model, x, y, attack, attack.eps, attack.task, backward).loss


def adversarial(model, x, y, attack=None) -> torch.Tensor:
    """Adversarial training's loss (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
    Attacks"): the task's loss at ``attack``'s adversarial examples only (default PGD-10, Linf 8/255). With
    ``advbench.attack("fgsm_rs")`` it is Fast-AT (Wong, Rice & Kolter 2020, "Fast is better than free")."""
    return _loss("adversarial", model, x, y, attack)


def mixed(model, x, y, attack=None, adv_weight: float = 0.5, backward=None) -> torch.Tensor:
    """Goodfellow, Shlens & Szegedy 2015 ("Explaining and Harnessing Adversarial Examples"; Miyato et al. 2017 for
    text): (1 - adv_weight) clean loss + adv_weight adversarial loss (default FGSM, Linf 8/255). With an attack on
    the embedding matrix (``target="embedding_weights"``) it runs its backward passes through ``backward`` and
    returns the loss detached."""
    return _loss("mixed", model, x, y, attack, backward, adv_weight=adv_weight)


def trades(model, x, y, attack=None, beta: float = 6.0) -> torch.Tensor:
    """TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy"):
    CE(clean) + beta KL(p(x) || p(x_adv)), x_adv from ``attack`` ascending that KL (default PGD-10, Linf 8/255)."""
    return _loss("trades", model, x, y, attack, beta=beta)


def mart(model, x, y, attack=None, beta: float = 6.0) -> torch.Tensor:
    """MART (Wang et al. 2020, "Improving Adversarial Robustness Requires Revisiting Misclassified Examples"):
    boosted CE at x_adv + beta KL(p(x) || p(x_adv)) weighted by 1 - p_y(x) (default PGD-10, Linf 8/255)."""
    return _loss("mart", model, x, y, attack, beta=beta)


def smart(model, ids, y, attack=None, beta: float = 1.0) -> torch.Tensor:
    """SMART (Jiang et al. 2020, "SMART: Robust and Efficient Fine-Tuning for Pre-trained Natural Language Models")
    for a text model (``embedding``, ``classify``): CE(clean) + beta (lambda_s) symmetric KL between the predictions
    at the clean and at the perturbed word embeddings, the perturbation ascending that KL (default one PGD step in
    the L2 ball of radius 1 on the embeddings; an attack built with ``task="text"``)."""
    return _loss("smart", model, ids, y, attack, beta=beta)


def freelb(model, ids, y, attack=None, init_mag: float = 0.0, backward=None) -> torch.Tensor:
    """FreeLB (Zhu et al. 2020, "FreeLB: Enhanced Adversarial Training for Natural Language Understanding") for a
    text model: ``attack.steps`` (K) ascent steps on a perturbation of the word embeddings, each adversarial loss / K
    backpropagated as it comes (default K=3 in the L2 ball of radius 1, step 0.3). It runs its K backward passes
    through ``backward`` (default ``loss.backward()``) and returns the loss detached: zero the gradients before,
    step the optimizer after."""
    return _loss("freelb", model, ids, y, attack, backward, init_mag=init_mag)


class Free:
    """Free-AT (Shafahi et al. 2019, "Adversarial Training for Free!"): each batch replayed ``replays`` (m) times;
    each replay's one backward pass updates the parameters and moves a perturbation, carried from batch to batch,
    by an FGSM step of size ``eps`` (Linf). ``step`` runs the m replays with their optimizer steps; count your
    epochs as advbench does (``epochs`` gradient computations: ceil(epochs / m) passes over the data)."""

    def __init__(self, eps="8/255", replays: int = 4):
        from advbench.eps import parse_eps
        from advbench.tasks import default_task
        self.eps, self.task = parse_eps(eps), default_task()
        # Free-AT's perturbation steps are FGSM's, taken inside the mode: no attack object runs
        self.mode = _mode("free", self.task, SimpleNamespace(name="fgsm"), replays=replays)

    def reset(self) -> None:
        """Forget the carried perturbation (advbench's loop does at each epoch's start)."""
        self.mode.start_epoch()

    def step(self, model, x, y, optimizer, backward=None) -> torch.Tensor:
        """The m replays of the batch, each: forward, ``backward(loss)`` (default ``loss.backward()``), optimizer
        step, FGSM step on the perturbation. Returns the last replay's loss, detached."""
        backward = backward or torch.Tensor.backward

        def update(loss, after_backward=None):
            optimizer.zero_grad(set_to_none=True)
            backward(loss)
            if after_backward is not None:
                after_backward()
            optimizer.step()
        return run_step(self.mode, model, x, y, None, self.eps, self.task, backward, update).loss
