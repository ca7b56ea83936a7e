"""An attack as configured: the ``attack`` group's options and ``eval.attacks`` entries become ``Attack`` objects."""
from dataclasses import dataclass, replace

from advbench.apgd import apgd
from advbench.attacks import cross_entropy, pgd
from advbench.embedding import FromEmbeddings, attack_embedding_output
from advbench.eps import check_budget, parse_eps
from advbench.errors import AdvbenchError
from advbench.threats import THREATS


@dataclass
class Attack:
    """A configured attack; ``attack(model, x, y)`` returns adversarial examples of ``x``."""

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

    def __call__(self, model, x, y, loss_fn=cross_entropy):
        if self.target == "embedding":
            return attack_embedding_output(self, model, x, y)
        threat = THREATS[self.norm](self.eps, self.alpha)
        if self.name == "apgd":
            return apgd(model, x, y, threat, self.steps, self.loss, self.targeted, self.n_targets, self.restarts,
                        self.bn_mode)
        return pgd(model, x, y, threat, self.steps, self.random_start, self.restarts, self.targeted,
                   self.bn_mode, loss_fn)

    def judge(self, model):
        """What classifies this attack's output: the model, or for embedding attacks the model from embeddings."""
        return FromEmbeddings(model) if self.target == "embedding" else model

    def scaled(self, factor: float) -> "Attack":
        """The same attack with eps and step scaled by ``factor`` (eps warm-up)."""
        return replace(self, eps=self.eps * factor, alpha=self.alpha * factor)


def _default_alpha(name: str, eps: float, steps: int, random_start: bool) -> float:
    if name == "fgsm":
        return 1.25 * eps if random_start else eps  # Fast-AT's step from a random start
    if name in ("fgm", "apgd"):
        return eps if name == "fgm" else 2 * eps  # APGD: the initial step of its adaptive schedule
    return 2.5 * eps / steps  # Madry et al.: enough to cross the ball and back


def _target(spec, name: str, text: bool) -> str:
    """What the attack perturbs, checked against the data: pixels of images, embeddings of text."""
    target = str(spec.target) if spec.target is not None else ("embedding" if text else "input")
    if text and target == "input":
        raise AdvbenchError("attack.target=input on a text data set: token ids cannot be perturbed; use "
                            "attack.target=embedding or embedding_weights")
    if not text and target != "input":
        raise AdvbenchError(f"attack.target={target} needs a text model (dataset=fortunes, text_csv or "
                            "synthetic_text with model=textcnn or transformer); image attacks use attack.target=input")
    if target != "input" and (name == "apgd" or spec.restarts != 1 or spec.targeted):
        raise AdvbenchError(f"attack.target={target} takes attack=fgm, fgsm or pgd, untargeted, with one restart")
    if target == "embedding_weights" and name != "fgm":
        raise AdvbenchError(f"attack.target=embedding_weights takes attack=fgm (the NLP recipe); attack={name} given")
    return target


def build_attack(spec, run_eps, text: bool = False) -> Attack | None:
    """Build an Attack from an attack config; its eps falls back to the run's top-level ``eps``."""
    name = str(spec.name)
    if name == "none":
        return None
    norm = {"fgsm": "linf", "fgm": "l2"}.get(name, str(spec.norm))
    if name in ("fgsm", "fgm") and str(spec.norm) != norm:
        raise AdvbenchError(f"attack.norm={spec.norm} does not apply to {name}, which is {norm} by definition; "
                            "use pgd for other norms")
    target = _target(spec, name, text)
    key = "eps" if spec.eps is None else f"attack {name} eps"
    eps = parse_eps(run_eps if spec.eps is None else spec.eps, key)
    if target == "input":  # embeddings have no [0,1] box, so no bound on eps
        check_budget(eps, norm, key)
    steps = 1 if name in ("fgsm", "fgm") else int(spec.steps)
    if steps < 1 or spec.restarts < 1:
        raise AdvbenchError(f"attack {name}: steps and restarts must be >= 1, got {steps} and {spec.restarts}")
    # APGD always starts at random and adapts its own step (from 2 eps); FGM never starts at random.
    random_start = name == "apgd" or (bool(spec.random_start) and name != "fgm")
    alpha = (_default_alpha(name, eps, steps, random_start) if spec.alpha is None
             else parse_eps(spec.alpha, f"attack {name} alpha"))
    return Attack(name, norm, eps, alpha, steps, random_start, int(spec.restarts), bool(spec.targeted),
                  str(spec.bn_mode), str(spec.loss), int(spec.n_targets), target)
