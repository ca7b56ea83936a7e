"""Clean and robust accuracy from per-example flags: each attack on the examples still correct, worst case kept."""
import torch

from advbench.amp import autocast
from advbench.attacks import preserved_modes
from advbench.data import TensorLoader
from advbench.distributed import gather_flags, shard, world


def predict(model, x, device=None, amp: str = "off", logits: bool = False) -> torch.Tensor:
    """Predicted labels (or logits) of ``x`` in eval mode without grad; the caller's mode is restored."""
    with preserved_modes(model), torch.no_grad(), autocast(device or x.device, amp):
        model.eval()
        out = model(x).float()
    return out if logits else out.argmax(1)


def robust_flags(model, x, y, attacks: dict, device, amp: str = "off", batch_size: int = 500,
                 cascade: bool = True, keep: int = 0):
    """Per-example flags ``clean`` and, per attack, ``correct after it``; plus the first ``keep`` adversarials.

    Under torchrun each rank attacks its shard and the flags are gathered (every rank must call this).
    """
    if world()[1] > 1 and not keep:
        idx = shard(len(y))
        local = local_flags(model, x[idx], y[idx], attacks, device, amp, batch_size, cascade)
        return gather_flags(local, len(y))
    return local_flags(model, x, y, attacks, device, amp, batch_size, cascade, keep)


def local_flags(model, x, y, attacks: dict, device, amp: str = "off", batch_size: int = 500,
                cascade: bool = True, keep: int = 0):
    """``robust_flags`` on this process's examples only.

    With ``cascade`` each attack runs only on the examples that survived every attack before it, so its flags
    are cumulative; without, each attack runs on every clean-correct example. Misclassified examples count as
    broken and are never attacked. The kept adversarial of an example is the one that broke it, if any.
    """
    flags = {"clean": []} | {name: [] for name in attacks}
    kept = []
    for start, (xb, yb) in zip(range(0, len(y), batch_size), TensorLoader(x, y, batch_size)):
        xb, yb = xb.to(device), yb.to(device)
        correct = predict(model, xb, device, amp) == yb
        flags["clean"].append(correct.cpu())
        alive, shown = correct.clone(), xb.clone()
        for name, attack in attacks.items():
            idx = (alive if cascade else correct).nonzero().squeeze(1)
            ok = torch.zeros_like(correct)
            if idx.numel():
                with autocast(device, amp):
                    x_adv = attack(model, xb[idx], yb[idx])
                judge = attack.judge(model) if hasattr(attack, "judge") else model
                ok[idx] = predict(judge, x_adv, device, amp) == yb[idx]
                if keep:  # examples not broken before: show this attack's attempt
                    shown[idx[alive[idx]]] = x_adv[alive[idx]]
            alive &= ok
            flags[name].append(ok.cpu())
        if start < keep:
            kept.append(shown[:keep - start].cpu())
    flags = {name: torch.cat(f) for name, f in flags.items()}
    return (flags, torch.cat(kept)) if keep else flags


def _mean(flags: torch.Tensor) -> float:
    return flags.sum().item() / max(len(flags), 1)


def worst_case(flags: dict) -> torch.Tensor:
    """Per example: correct clean and under every attack."""
    worst = flags["clean"].clone()
    for name, f in flags.items():
        worst &= f
    return worst


def summarize(flags: dict) -> dict:
    """Accuracies from per-example flags; ``robust_acc`` is the per-example worst case over all attacks."""
    per_attack = {name: _mean(f) for name, f in flags.items() if name != "clean"}
    return {
        "n_examples": len(flags["clean"]),
        "clean_acc": _mean(flags["clean"]),
        "robust_acc": _mean(worst_case(flags)) if per_attack else None,
        "robust_acc_by_attack": per_attack,
    }


def evaluate(model, x, y, attacks: dict, device, amp: str = "off", batch_size: int = 500,
             cascade: bool = True) -> dict:
    """Clean accuracy, robust accuracy under each attack, and their per-example worst case."""
    return summarize(robust_flags(model, x, y, attacks, device, amp, batch_size, cascade))
