"""Training modes: each a small class whose ``step`` reads top to bottom (attack, forward, loss, update)."""
import math

import torch

from advbench.attacks.embedding import ascend_embedding_weights, move_embedding_weights, put_back_embedding_weights
from advbench.attacks.gradients import FP16_LOSS_SCALE, Passes
from advbench.errors import AdvbenchError
from advbench.training.losses import mart_boosted_ce, mart_weighted_kl, trades_attack_loss, trades_kl
from advbench.training.embedding_modes import FreeLB, Smart
from advbench.training.mode import Batch, Mode, Step, Term, mean_of, total


class Standard(Mode):
    """Clean training: the task's loss on clean examples."""

    name, adversarial = "standard", False

    def step(self, b: Batch) -> Step:
        with b.autocast():
            outputs = b.model(b.x)
            terms = b.task.mean_terms(outputs, b.y)
            loss = total(terms.values())
        b.update(loss)
        return Step(loss, clean=outputs, terms=terms)


class Adversarial(Mode):
    """Adversarial training (Madry et al. 2018): the task's loss on adversarial examples only."""

    name, accepts = "adversarial", ("fgsm", "pgd", "fgm")

    def step(self, b: Batch) -> Step:
        with b.autocast():  # the attack runs in its own bn_mode (eval by default) and leaves no parameter grads
            x_adv = b.attack(b.x, b.y)
            outputs = b.task.forward_perturbed(b.model, b.x, x_adv)
            terms = b.task.mean_terms(outputs, b.y)
            loss = total(terms.values())
        b.update(loss)
        return Step(loss, adv=outputs, terms=terms)


class Fast(Adversarial):
    """Fast-AT (Wong, Rice & Kolter 2020): adversarial training with FGSM from a random start, step 1.25 eps."""

    name, accepts = "fast", ("fgsm",)


class Mixed(Mode):
    """Goodfellow et al. 2015 (and Miyato et al. 2017 for text): (1 - w) clean loss + w adversarial loss."""

    name, accepts = "mixed", ("fgsm", "pgd", "fgm")

    def terms(self, task, y) -> dict:
        w = self.settings.adv_weight
        return {"clean loss": Term(lambda c, a, r: (1 - w) * task.total_loss(c, y, r), "clean"),
                "adversarial loss (at x_adv)": Term(lambda c, a, r: w * task.total_loss(a, y, r), "adversarial")}

    def step(self, b: Batch) -> Step:
        if getattr(b.attack, "target", "input") == "embedding_weights":
            return self.weights_step(b)
        return self.terms_step(b)

    def weights_step(self, b: Batch) -> Step:
        """The NLP competitions' recipe on the embedding matrix W. After the clean backward pass, FGM moves W by
        eps along the clean loss's gradient; PGD takes ``attack.steps`` steps of ``attack.alpha`` along the
        gradient of the loss at the moved W (the first along the clean one), W kept within Frobenius distance eps
        of its clean value. The last adversarial loss's parameter gradient is added to the clean one (the earlier
        steps' only give directions), W is put back bit for bit, then the optimizer steps."""
        w, found = self.settings.adv_weight, {}
        steps = b.attack.steps  # FGM: 1
        alpha = b.attack.alpha if steps > 1 else None
        with b.autocast():
            clean = b.model(b.x)
        loss = (1 - w) * b.task.mean_loss(clean, b.y)

        def add_adversarial_gradient():
            embedding = b.net.embedding
            clean_weights = move_embedding_weights(embedding, b.eps, alpha)  # the first step, along the clean gradient
            try:
                for step in range(steps):
                    last = step == steps - 1
                    with b.autocast():  # a direction only comes from the bare module: no DDP gradient hooks
                        found["adv"] = (b.model if last else b.net)(b.x)
                    found["loss"] = w * b.task.mean_loss(found["adv"], b.y)
                    if last:
                        b.backward(found["loss"])
                    else:  # no parameter gradient accumulates; scaled against fp16 underflow (normalized away)
                        Passes.taken += 1
                        grad = torch.autograd.grad(found["loss"] * FP16_LOSS_SCALE, embedding.weight)[0]
                        ascend_embedding_weights(embedding, grad, alpha, b.eps, clean_weights)
            finally:  # whatever stopped the pass, the clean matrix is what the optimizer and a checkpoint see
                put_back_embedding_weights(embedding, clean_weights)

        b.update(loss, add_adversarial_gradient)
        return Step((loss + found["loss"]).detach(), clean.detach(), found["adv"].detach())


class Free(Mode):
    """Free-AT (Shafahi et al. 2019): each batch replayed m times; one backward pass per replay gives both the
    parameter update and an FGSM step (size eps) on a perturbation carried from batch to batch."""

    name, accepts = "free", ("fgsm",)

    def __init__(self, settings):
        super().__init__(settings)
        self.updates_per_batch, self.delta = settings.replays, None

    def passes(self, epochs: int) -> int:
        """``epochs`` counts gradient computations: ceil(epochs / m) passes of m replays each."""
        return math.ceil(epochs / self.settings.replays)

    def start_epoch(self) -> None:
        self.delta = None

    def step(self, b: Batch) -> Step:
        if self.delta is None or self.delta.shape != b.x.shape:
            self.delta = torch.zeros_like(b.x)
        for _ in range(self.settings.replays):
            x_adv = (b.x + self.delta).clamp(0, 1).requires_grad_(True)
            with b.autocast():
                outputs = b.model(x_adv)
            terms = b.task.mean_terms(outputs, b.y)
            loss = total(terms.values())
            b.update(loss)  # its backward fills x_adv.grad too (scaled under fp16: the sign is all we use)
            self.delta = (self.delta + b.eps * x_adv.grad.sign()).clamp(-b.eps, b.eps)
        return Step(loss.detach(), adv=outputs.detach(), terms=terms)


class Trades(Mode):
    """TRADES (Zhang et al. 2019): CE(clean) + beta KL(p(x) || p(x_adv)), x_adv maximizing that KL."""

    name, accepts = "trades", ("pgd", "fgsm")

    def check(self, attack) -> None:
        super().check(attack)
        if attack.restarts > 1 or attack.targeted:
            raise AdvbenchError("training=trades ascends its KL loss with one untargeted run: "
                                "attack.restarts=1 and attack.targeted=false")

    def terms(self, task, y) -> dict:
        beta = self.settings.beta
        return {"CE": Term(lambda c, a, r: task.total_loss(c, y, r), "clean"),
                "beta * KL(p(x) || p(x_adv))": Term(lambda c, a, r: beta * mean_of(trades_kl(c.float(), a.float()), r),
                                                    "clean")}

    def step(self, b: Batch) -> Step:
        with b.autocast():
            p_clean = b.task.predict(b.net, b.x).float().softmax(1)  # fixed while the attack ascends the KL
        return self.terms_step(b, lambda outputs, _: trades_attack_loss(outputs.float(), p_clean))


class Mart(Mode):
    """MART (Wang et al. 2020): boosted CE on x_adv + beta KL(p(x) || p(x_adv)) weighted by 1 - p_y(x)."""

    name, accepts = "mart", ("pgd", "fgsm")

    def terms(self, task, y) -> dict:
        beta = self.settings.beta
        return {"boosted CE (at x_adv)": Term(lambda c, a, r: mean_of(mart_boosted_ce(a.float(), y), r), "adversarial"),
                "beta * weighted KL": Term(lambda c, a, r: beta * mean_of(mart_weighted_kl(c.float(), a.float(), y), r),
                                           "clean")}

    def step(self, b: Batch) -> Step:
        return self.terms_step(b)


class Mtd(Mode):
    """MTD (Zhang & Wang 2019, "Towards Adversarially Robust Object Detection"): per image, train on the stronger
    of the attack on the classification loss (A_cls) and the attack on the localization loss (A_loc)."""

    name, accepts = "mtd", ("pgd", "fgsm")

    def step(self, b: Batch) -> Step:
        with b.autocast():
            x_cls = b.attack(b.x, b.y, b.task.objective(weights={"cls": 1.0}))
            x_loc = b.attack(b.x, b.y, b.task.objective(weights={"box": 1.0}))
            # the stronger per image: the higher total loss, judged in eval mode (no batch statistics updated)
            stronger = (b.task.total_loss(b.task.predict(b.net, x_cls), b.y, False)
                        >= b.task.total_loss(b.task.predict(b.net, x_loc), b.y, False))
            x_adv = torch.where(stronger.view(-1, *[1] * (b.x.dim() - 1)), x_cls, x_loc)
            outputs = b.model(x_adv)
            terms = b.task.mean_terms(outputs, b.y)
            loss = total(terms.values())
        b.update(loss)
        return Step(loss, adv=outputs, terms=terms)


MODES = {mode.name: mode for mode in (Standard, Adversarial, Mixed, Fast, Free, Trades, Mart, Mtd, FreeLB, Smart)}


def build_mode(settings, task) -> Mode:
    """The training mode ``settings.name`` (the ``training`` config group), checked against the task."""
    name = str(settings.name)
    if name not in MODES:
        raise AdvbenchError(f"training.name={name}: expected one of {', '.join(MODES)}")
    if name not in task.modes:
        raise AdvbenchError(f"training={name} on {task.name} data: expected training="
                            f"{' or '.join(task.modes)}")
    return MODES[name](settings)
