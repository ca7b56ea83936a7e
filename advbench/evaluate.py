"""Clean and robust accuracy: every attack on every clean-correct example, worst case kept per example."""
import torch

from advbench.amp import autocast
from advbench.data import TensorLoader


def predict(model, x, device=None, amp: str = "off", logits: bool = False) -> torch.Tensor:
    """Predicted labels (or logits) of ``x`` in eval mode without grad; the caller's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(device or x.device, amp):
            out = model(x).float()
    finally:
        model.train(was_training)
    return out if logits else out.argmax(1)


def robust_flags(model, x, y, attacks: dict, device, amp: str = "off", batch_size: int = 500) -> dict:
    """Per-example flags: ``clean`` (correct) and, per attack, correct under it; examples in input order."""
    flags = {"clean": []} | {name: [] for name in attacks}
    for xb, yb in TensorLoader(x, y, batch_size):
        xb, yb = xb.to(device), yb.to(device)
        correct = predict(model, xb, device, amp) == yb
        flags["clean"].append(correct.cpu())
        idx = correct.nonzero().squeeze(1)  # a misclassified example is broken already: don't attack it
        for name, attack in attacks.items():
            ok = torch.zeros_like(correct)
            if idx.numel():
                with autocast(device, amp):
                    x_adv = attack(model, xb[idx], yb[idx])
                ok[idx] = predict(model, x_adv, device, amp) == yb[idx]
            flags[name].append(ok.cpu())
    return {name: torch.cat(f) for name, f in flags.items()}


def _mean(flags: torch.Tensor) -> float:
    return flags.sum().item() / max(len(flags), 1)


def summarize(flags: dict) -> dict:
    """Accuracies from per-example flags; ``robust_acc`` is the per-example worst case over all attacks."""
    clean = flags["clean"]
    per_attack = {name: _mean(f) for name, f in flags.items() if name != "clean"}
    worst = clean.clone()
    for name in per_attack:
        worst &= flags[name]
    return {
        "n_examples": len(clean),
        "clean_acc": _mean(clean),
        "robust_acc": _mean(worst) if per_attack else None,
        "robust_acc_by_attack": per_attack,
    }


def evaluate(model, x, y, attacks: dict, device, amp: str = "off", batch_size: int = 500) -> dict:
    """Clean accuracy, robust accuracy under each attack, and their per-example worst case."""
    return summarize(robust_flags(model, x, y, attacks, device, amp, batch_size))
