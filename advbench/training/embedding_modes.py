"""Training modes of the NLP literature, on the word embeddings of a text model: FreeLB and SMART."""
import torch
import torch.nn.functional as F

from advbench.training.mode import Batch, Mode, Step, Term, mean_of, total


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-8).view(-1, *[1] * (t.dim() - 1))


class FreeLB(Mode):
    """FreeLB (Zhu et al. 2020): K ascent steps on a perturbation of the word embeddings (``attack.steps``, step
    ``attack.alpha`` along the per-example normalized gradient, kept within L2 norm ``eps`` per example), the
    parameter gradients of the K adversarial losses (each / K) accumulated, then one optimizer step. The start is
    uniform noise of magnitude ``training.init_mag`` / sqrt(tokens x dims) (0: the clean embeddings)."""

    name, accepts = "freelb", ("pgd",)

    def step(self, b: Batch) -> Step:
        steps = b.attack.steps
        real = (~b.task.pinned(b.x))[..., None].float()  # padding and special tokens are never perturbed
        shape = (*b.x.shape, b.net.embedding.weight.shape[1])  # the word embeddings' shape, without computing them
        delta = torch.zeros(shape, device=b.x.device)
        if self.settings.init_mag > 0:
            dims = real.flatten(1).sum(1).view(-1, 1, 1) * shape[-1]
            delta = (torch.rand(shape, device=b.x.device) * 2 - 1) * real * self.settings.init_mag / dims.sqrt()
        state = {"delta": delta.requires_grad_(True), "losses": []}

        def adversarial_loss():
            with b.autocast():
                logits = b.net.classify(b.net.embedding(b.x) + state["delta"])
                loss = F.cross_entropy(logits.float(), b.y) / steps
            state["losses"].append(loss.detach())
            state["logits"] = logits.detach()
            return loss

        def ascend():
            """Move delta along its gradient (the fp16 loss scale cancels in the normalization), keep it in the
            ball, and accumulate the next step's parameter gradients on top of this one's."""
            for _ in range(steps - 1):
                grad = state["delta"].grad * real  # the step's size is spent on the positions that move
                delta = state["delta"].detach() + b.attack.alpha * grad / _per_example_norm(grad)
                if b.eps > 0:
                    delta = delta * (b.eps / _per_example_norm(delta)).clamp(max=1.0)
                state["delta"] = (delta * real).requires_grad_(True)
                b.backward(adversarial_loss())

        b.update(adversarial_loss(), ascend)
        return Step(total(state["losses"]), adv=state["logits"])


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p || q) + KL(q || p), SMART's smoothness measure (Jiang et al. 2020)."""
    log_p, log_q = F.log_softmax(logits_a, dim=1), F.log_softmax(logits_b, dim=1)
    return ((log_p.exp() * (log_p - log_q)).sum(1) + (log_q.exp() * (log_q - log_p)).sum(1))


class Smart(Mode):
    """SMART (Jiang et al. 2020): CE(clean) + ``training.beta`` (lambda_s) times the symmetric KL between the
    predictions at the clean and at the perturbed embeddings, the perturbation ascending that KL. It starts where
    the attack starts (``attack.random_start``: uniform in the eps ball) rather than from SMART's N(0, sigma^2)."""

    name, accepts = "smart", ("pgd", "fgm")

    def terms(self, task, y) -> dict:
        lam = self.settings.beta
        return {"CE": Term(lambda c, a, r: task.total_loss(c, y, r), "clean"),
                "lambda * symmetric KL": Term(lambda c, a, r: lam * mean_of(symmetric_kl(c.float(), a.float()), r),
                                              "adversarial")}

    def step(self, b: Batch) -> Step:
        with b.autocast():
            clean = b.task.predict(b.net, b.x).float()  # fixed while the perturbation ascends the KL
        return self.terms_step(b, lambda outputs, _: symmetric_kl(outputs.float(), clean))
