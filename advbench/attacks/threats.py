"""Threat models: the eps ball an attack lives in, as random init, ascent step and projection.

After MadryLab robustness's ``attack_steps.py``: one PGD loop (``attacks.pgd``) serves every norm, so a new
threat model is a new small class here, not a new copy of the loop. All tensors are images in [0,1].
"""
import torch


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _box(x: torch.Tensor, box: bool) -> torch.Tensor:
    return x.clamp_(0, 1) if box else x


class LinfThreat:
    """The Linf ball ||delta||_inf <= eps, intersected with the [0,1] box (``box=False``: embeddings, no box)."""

    def __init__(self, eps: float, alpha: float, box: bool = True):
        self.eps, self.alpha, self.box = eps, alpha, box

    def init(self, x: torch.Tensor) -> torch.Tensor:
        """A uniform random point of the ball around ``x``."""
        return _box(x + torch.empty_like(x).uniform_(-self.eps, self.eps), self.box)

    def step(self, x: torch.Tensor, grad: torch.Tensor, alpha=None) -> torch.Tensor:
        """Steepest ascent under Linf: the sign of the gradient, times ``alpha`` (a number or per example)."""
        return x + (self.alpha if alpha is None else alpha) * grad.sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Clip to the ball around ``x``, then to valid pixels."""
        return _box(torch.min(torch.max(x_adv, x - self.eps), x + self.eps), self.box)


class L2Threat:
    """The L2 ball ||delta||_2 <= eps per example, intersected with the [0,1] box (``box=False``: no box)."""

    def __init__(self, eps: float, alpha: float, box: bool = True):
        self.eps, self.alpha, self.box = eps, alpha, box

    def init(self, x: torch.Tensor) -> torch.Tensor:
        """A random point of the ball: a Gaussian direction at a uniform radius."""
        direction = torch.randn_like(x)
        direction /= _per_example_norm(direction).clamp_min(1e-12)
        radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
        return self.project(x + direction * radius * self.eps, x)

    def step(self, x: torch.Tensor, grad: torch.Tensor, alpha=None) -> torch.Tensor:
        """Steepest ascent under L2: the gradient scaled to length ``alpha`` (a number or per example)."""
        return x + (self.alpha if alpha is None else alpha) * grad / _per_example_norm(grad).clamp_min(1e-12)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Shrink the perturbation onto the ball, then clip to valid pixels."""
        delta = x_adv - x
        delta = delta * (self.eps / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return _box(x + delta, self.box)


THREATS = {"linf": LinfThreat, "l2": L2Threat}
