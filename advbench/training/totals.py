"""A training epoch's per-step numbers, kept as device tensors and reduced when read.

Recording a step launches no kernel: where a step is launch-bound (the Hugging Face text step on a GPU), the
running sums and the finiteness test, about a dozen small kernels a step, would otherwise cost as much as the
model's own work. They run once per progress refresh instead, and a read is one host transfer.
"""
import torch


class Totals:
    """Running sums of per-step values, in float64 and in step order as the host's Python floats were (the CPU's
    ``cumsum`` adds sequentially), so a CPU run's numbers stay what they were when each step was read."""

    def __init__(self, device):
        self.device, self.steps = device, {}

    def add(self, name: str, value: torch.Tensor, weight: float = 1) -> None:
        """Record ``value * weight`` (a 0-d tensor; the product is taken in float64 when read)."""
        self.steps.setdefault(name, []).append((value.detach(), weight))

    def _sum(self, name: str) -> torch.Tensor:
        entries = self.steps[name]
        values = torch.stack([v for v, _ in entries]).to(self.device, torch.float64)
        weights = torch.tensor([w for _, w in entries], dtype=torch.float64, device=self.device)
        total = (values * weights).cumsum(0)[-1]
        self.steps[name] = [(total, 1)]  # later reads continue from here, in the same order
        return total

    def read(self) -> dict:
        """Every sum so far, brought over in one transfer."""
        names = list(self.steps)
        values = torch.stack([self._sum(k) for k in names]).tolist() if names else []
        return dict(zip(names, values))


class FiniteWatch:
    """The losses a step hands to the optimizer, tested for NaN and inf together when ``first_bad`` is asked."""

    def __init__(self):
        self.unchecked = []  # (step, loss)

    def add(self, step: int, loss: torch.Tensor) -> None:
        """Record the loss of ``step`` (a per-element loss is reduced so that any non-finite element shows)."""
        loss = loss.detach()
        self.unchecked.append((step, loss if loss.dim() == 0 else loss.abs().amax()))

    def first_bad(self) -> int | None:
        """The first recorded step whose loss was not finite, or None; one host sync."""
        if not self.unchecked:
            return None
        steps, losses = zip(*self.unchecked)
        self.unchecked = []
        finite = torch.isfinite(torch.stack([v.to(losses[0].dtype) for v in losses]))
        if bool(finite.all()):
            return None
        return steps[int((~finite).nonzero()[0])]
