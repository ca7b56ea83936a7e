"""Image classification: labels as a tensor, logits out, cross-entropy, accuracy."""
import torch
import torch.nn.functional as F

from advbench.attacks.gradients import preserved_modes
from advbench.errors import AdvbenchError
from advbench.tasks.base import Task, worst_case


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio, per example; scale invariant, so saturated softmax doesn't mask gradients."""
    top, idx = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_other = torch.where(idx[:, 0] == y, top[:, 1], top[:, 0])
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, per example: pushes the target's logit above the true class's."""
    top = logits.sort(dim=1, descending=True).values
    z_y, z_t = logits.gather(1, y[:, None]).squeeze(1), logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _mean(flags: torch.Tensor) -> float:
    return flags.sum().item() / max(len(flags), 1)


class Classification(Task):
    """Labels (an int64 tensor), logits, cross-entropy; an example is broken when its argmax is wrong."""

    name = "classification"
    ranks_wrong = True
    terms = ("ce",)
    metrics = ("clean_acc", "robust_acc")
    modes = ("standard", "adversarial", "mixed", "fast", "free", "trades", "mart")
    models = ("mlp", "small_cnn", "preact_resnet18", "torchvision", "timm", "robustbench")
    logits = True

    def loss(self, outputs, targets) -> dict:
        """{"ce": per-example cross-entropy}, computed in fp32 even under autocast."""
        return {"ce": F.cross_entropy(outputs.float(), targets, reduction="none")}

    def mean_terms(self, outputs, targets) -> dict:
        """{"ce": mean cross-entropy} (one fused reduction, as hand-written training code computes it)."""
        return {"ce": F.cross_entropy(outputs.float(), targets)}

    def objective(self, name: str = "loss", weights: dict | None = None, target=None, **kwargs):
        """``loss``/``ce`` (cross-entropy, the default), ``dlr`` (Croce & Hein 2020), or with ``target`` (labels)
        the targeted DLR loss."""
        if target is not None:
            return lambda outputs, y: dlr_targeted_loss(outputs.float(), y, target)
        if name == "dlr":
            return lambda outputs, y: dlr_loss(outputs.float(), y)
        if name in ("loss", "ce"):
            self.check_terms(weights)
            return lambda outputs, y: F.cross_entropy(outputs.float(), y, reduction="none")
        raise AdvbenchError(f"attack.loss={name} is not defined for {self.name}: expected ce or dlr")

    def correct(self, outputs, targets) -> torch.Tensor:
        """Per example: argmax == label."""
        return outputs.argmax(1) == targets

    def random_wrong(self, model, x, y) -> torch.Tensor:
        """A uniformly random wrong class per example (targeted PGD's goal)."""
        with preserved_modes(model), torch.no_grad():
            model.eval()  # a probe of the class count: batch norm in train mode would refuse a batch of one
            n_classes = model(x[:1]).shape[1]
        return (y + torch.randint(1, n_classes, y.shape, device=y.device)) % n_classes

    def ranked_wrong(self, model, x, y, n: int):
        """APGD-T's targets: the top ``n`` wrong classes by clean logit, best first, as a (N, n) tensor."""
        with torch.no_grad():
            ranked = model(x).float().sort(dim=1, descending=True).indices
        others = ranked[ranked != y[:, None]].view(len(y), -1)
        return others[:, :min(n, others.shape[1])]

    def labels(self, outputs) -> list:
        """The predicted class of each example."""
        return outputs.argmax(1).tolist()

    def plot_examples(self, x, x_adv, y, clean_outputs, adv_outputs, path, notes=None, title: str = "") -> None:
        """adversarial_examples.png: clean and adversarial images, the perturbation, true and predicted classes."""
        from advbench.tasks.classification.plots import plot_examples
        plot_examples(x.cpu(), x_adv.cpu(), y.tolist(), self.labels(clean_outputs), self.labels(adv_outputs), path,
                      self.classes, notes, title)

    def write_saliency(self, model, test, attack, mode, settings, device, out) -> tuple:
        """job=saliency: one PNG of gradient maps per test image (see evaluation/saliency.py)."""
        from advbench.tasks.classification.saliency import write_saliency
        return write_saliency(model, test, attack, mode, settings, device, out)

    def probabilities(self, outputs) -> bool:
        """Whether the outputs look like probabilities (non-negative rows summing to 1), not logits."""
        return bool((outputs >= 0).all() and torch.allclose(
            outputs.sum(1), torch.ones(len(outputs), device=outputs.device), atol=1e-3))

    def summarize(self, flags: dict, records=None) -> dict:
        """Accuracies from per-example flags; ``robust_acc`` is the per-example worst case over all attacks."""
        per_attack = {name: _mean(f) for name, f in flags.items() if name != "clean"}
        return {
            "n_examples": len(flags["clean"]),
            "clean_acc": _mean(flags["clean"]),
            "robust_acc": _mean(worst_case(flags)) if per_attack else None,
            "robust_acc_by_attack": per_attack,
        }
