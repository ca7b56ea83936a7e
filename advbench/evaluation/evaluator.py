"""Robust evaluation from per-example flags: each attack on the examples still correct, the worst case kept."""
import torch

from advbench.data.loaders import TensorLoader
from advbench.runtime.amp import autocast
from advbench.runtime.distributed import gather_flags, shard, world


class Evaluator:
    """How an evaluation runs: the task that judges outputs, the device, autocast, batch size and cascade."""

    def __init__(self, task, device, amp: str = "off", batch_size: int = 500, cascade: bool = True):
        self.task, self.device, self.amp = task, torch.device(device), amp
        self.batch_size, self.cascade = batch_size, cascade

    def predict(self, model, x):
        """The model's outputs on ``x`` in eval mode, without grad, under the evaluation's autocast."""
        with autocast(self.device, self.amp):
            return self.task.predict(model, x)

    def evaluate(self, model, x, targets, attacks: dict, cascade: bool | None = None) -> dict:
        """The task's summary (clean and robust numbers, per attack and worst case) of ``model`` on the examples."""
        return self.task.summarize(self.flags(model, x, targets, attacks, cascade=cascade))

    def flags(self, model, x, targets, attacks: dict, keep: int = 0, cascade: bool | None = None):
        """Per-example flags ``clean`` and, per attack, ``correct after it``; plus the first ``keep`` adversarials.

        Under torchrun each rank attacks its shard and the flags are gathered (every rank must call this).
        """
        cascade = self.cascade if cascade is None else cascade
        n = self.task.count(targets)
        if world()[1] > 1 and not keep:
            idx = shard(n)
            local = self.local_flags(model, x[idx], self.task.index(targets, idx), attacks, cascade)
            return gather_flags(local, n)
        return self.local_flags(model, x, targets, attacks, cascade, keep)

    def local_flags(self, model, x, targets, attacks: dict, cascade: bool, keep: int = 0):
        """``flags`` on this process's examples only.

        With ``cascade`` each attack runs only on the examples that survived every attack before it, so its flags
        are cumulative; without, each attack runs on every clean-correct example. Examples wrong already count as
        broken and are never attacked. The kept adversarial of an example is the one that broke it, if any.
        """
        task = self.task
        flags, kept = {"clean": []} | {name: [] for name in attacks}, []
        batches = TensorLoader(x, targets, self.batch_size, index=task.index)
        for start, (xb, tb) in zip(range(0, task.count(targets), self.batch_size), batches):
            xb, tb = xb.to(self.device), task.to(tb, self.device)
            correct = task.correct(self.predict(model, xb), tb)
            flags["clean"].append(correct.cpu())
            alive, shown = correct.clone(), xb.clone()
            for name, attack in attacks.items():
                idx = (alive if cascade else correct).nonzero().squeeze(1)
                ok = torch.zeros_like(correct)
                if idx.numel():
                    xi, ti = xb[idx], task.index(tb, idx)
                    with autocast(self.device, self.amp):
                        x_adv = attack(model, xi, ti)
                        outputs = (attack.outputs(model, xi, x_adv) if hasattr(attack, "outputs")
                                   else task.predict(model, x_adv))
                    ok[idx] = task.correct(outputs, ti)
                    if keep:  # examples not broken before: show this attack's attempt
                        shown[idx[alive[idx]]] = x_adv[alive[idx]]
                alive &= ok
                flags[name].append(ok.cpu())
            if start < keep:
                kept.append(shown[:keep - start].cpu())
        flags = {name: torch.cat(f) for name, f in flags.items()}
        return (flags, torch.cat(kept)) if keep else flags
