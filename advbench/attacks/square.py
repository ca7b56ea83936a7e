"""Square Attack (Andriushchenko et al. 2020): score-based random search over square windows, margin loss.

After fra31/auto-attack's ``square.py``, as its standard preset runs it (``resc_schedule=False``). Every iteration
draws one window position (and, for L2, one pattern orientation) for the whole batch and one sign per example and
channel where the reference does, in the reference's order, so the random stream does not depend on which examples
are still alive. Only examples the margin says are still correct are queried; a candidate is kept if it lowers
the margin. Random numbers are drawn on the CPU (or the generator's device) so every device sees the same ones.
"""
import functools
import logging
import math

import torch

from advbench.attacks.gradients import as_input, attack_mode
from advbench.attacks.threats import LinfThreat
from advbench.attacks.windowed import Windowed

log = logging.getLogger(__name__)

# The layer inputs windowed queries may keep (evaluation/batch.py keeps a whole pass's layers to a few MiB): on
# small_cnn, 1,380 examples at once.
WINDOWED_BYTES = 128 * 2**20

# The reference's schedule: p_init is halved after each of these iterations (of 10,000, when rescaled).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, it: int, n_queries: int, rescale: bool = False) -> float:
    """The fraction of pixels the square covers at iteration ``it``."""
    if rescale:
        it = int(it / n_queries * 10000)
    return p_init / 2 ** sum(it > h for h in _HALVINGS)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{k != y} z_k per example: positive while correct."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(1)


class _Draws:
    """The random numbers, drawn as the reference draws them (``torch.rand`` then a transform)."""

    def __init__(self, generator, device):
        self.generator, self.device = generator, device

    def rand(self, *shape):
        g = self.generator
        return torch.rand(shape, generator=g, device=g.device if g is not None else "cpu").to(self.device)

    def sign(self, *shape):
        return torch.where(self.rand(*shape) < 0.5, -1.0, 1.0)

    def position(self, high: int) -> int:
        # Like the reference, an offset in [0, high): the last position is never drawn.
        return int(high * self.rand(1).item())


@functools.lru_cache(maxsize=None)
def _rings(a: int, b: int) -> torch.Tensor:
    """The reference's ``eta_rectangles``: nested rectangles around the centre, ring k weighted 1/(k+1)^2, unit L2."""
    ring = torch.maximum((torch.arange(a) - a // 2).abs()[:, None], (torch.arange(b) - b // 2).abs()[None, :])
    weights = 1.0 / (torch.arange(max(a // 2, b // 2) + 1, dtype=torch.float) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # cell in ring m gets the weights of every ring k >= m
    pattern = tail[ring]
    return pattern / pattern.norm() if pattern.numel() else pattern


def _eta(s: int, draws: _Draws) -> torch.Tensor:
    """The L2 window pattern: +rings on the top half, -rings on the bottom, unit L2, transposed half the time."""
    pattern = torch.cat((_rings(s // 2, s), -_rings(s - s // 2, s)))
    pattern = (pattern / pattern.norm()).to(draws.device)
    return pattern.t() if draws.rand(1).item() > 0.5 else pattern


def _unit_l2(t: torch.Tensor) -> torch.Tensor:
    return t / (t.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)


def _linf_init(x, eps, draws):
    # Vertical stripes of +-eps: one sign per example, channel and column.
    return (x + eps * draws.sign(x.shape[0], x.shape[1], 1, x.shape[3])).clamp(0, 1)


def _linf_candidate(x, x_best, alive, eps, p, draws):
    """The window's (top, left) and its new contents for the ``alive`` rows: the rest of each image stays."""
    c, h, w = x.shape[1:]
    s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
    vh, vw = draws.position(h - s), draws.position(w - s)
    window = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
    # Only the window changes, and the rest is in the ball already, so only the window needs projecting.
    current = x_best[window].index_select(0, alive)
    return vh, vw, LinfThreat(eps, 0.0).project(current + 2 * eps * draws.sign(c, 1, 1), x[window][alive])


def _l2_init(x, eps, draws):
    # A grid of s x s windows (s = h // 5), each an eta pattern with a random sign per example and channel.
    n, c, h, w = x.shape
    s = max(h // 5, 1)
    start = (h - s * 5) // 2
    delta = torch.zeros_like(x)
    for i in range(h // s):
        for j in range(w // s):
            vh, vw = start + i * s, start + j * s
            delta[:, :, vh:vh + s, vw:vw + s] += _eta(s, draws).view(1, 1, s, s) * draws.sign(n, c, 1, 1)
    return (x + _unit_l2(delta) * eps).clamp(0, 1)


def _l2_candidate(x, x_best, alive, eps, p, draws):
    """The whole image changes (its delta is rescaled to the eps sphere): the window is the image."""
    x, x_best = x[alive], x_best[alive]
    n, c, h, w = x.shape
    s = max(int(round(math.sqrt(p * h * w))), 3)
    s = min(s + 1 - s % 2, h, w)  # odd, so the pattern has a centre
    delta = x_best - x
    vh, vw, vh2, vw2 = (draws.position(h - s), draws.position(w - s), draws.position(h - s), draws.position(w - s))
    win, win2 = (..., slice(vh, vh + s), slice(vw, vw + s)), (..., slice(vh2, vh2 + s), slice(vw2, vw2 + s))
    mask = torch.zeros(h, w, device=x.device, dtype=x.dtype)
    mask[win], mask[win2] = 1.0, 1.0
    # The new window takes the old one's mass, the second window's, and whatever the eps budget has left.
    budget = ((eps ** 2 - delta.flatten(1).pow(2).sum(1)).clamp_min(0).view(-1, 1, 1, 1) / c
              + (delta * mask).pow(2).sum((-2, -1), keepdim=True))
    old = delta[win]
    new = _eta(s, draws).view(1, 1, s, s) * draws.sign(n, c, 1, 1)
    new = new + old / (1e-12 + old.pow(2).sum((-2, -1), keepdim=True).sqrt())
    new = new / (1e-12 + new.pow(2).sum((-2, -1), keepdim=True).sqrt()) * budget.sqrt()
    delta[win2] = 0.0
    delta[win] = new
    return 0, 0, (x + _unit_l2(delta) * eps).clamp(0, 1)


def _windowed(model, norm: str):
    """Windowed queries for ``model`` (see windowed.py), or None: only a Linf candidate changes one window and
    nothing else (an L2 candidate's delta is rescaled over the whole image)."""
    return Windowed.of(model) if norm == "linf" else None


def _square_run(model, x, y, norm, eps, n_queries, p_init, rescale, draws):
    """One Square run; returns (best points, margins at them)."""
    init, candidate = (_linf_init, _linf_candidate) if norm == "linf" else (_l2_init, _l2_candidate)
    windowed = _windowed(model, norm)  # where the network allows, only what the window reaches is recomputed
    x_best = init(x, eps, draws)
    margin = _margin((windowed.start if windowed else model)(x_best), y)
    for it in range(n_queries):
        alive = (margin > 0).nonzero().squeeze(1)
        if alive.numel() == 0:
            break
        top, left, new = candidate(x, x_best, alive, eps, p_selection(p_init, it, n_queries, rescale), draws)
        region = (..., slice(top, top + new.shape[2]), slice(left, left + new.shape[3]))
        window = x_best[region]  # a view: updates land in x_best
        # A candidate equal to the current point (its window already at the drawn vertex, or clipped back to it)
        # cannot lower the margin: it is not queried (the reference queries it; 20% of queries, Fashion-MNIST).
        moved = (new != window[alive]).flatten(1).any(1)
        rows, new = alive[moved], new[moved]
        if rows.numel() == 0:
            continue
        if windowed:
            logits = windowed.query(rows, top, left, new)
        else:
            x_new = x_best[rows]
            x_new[region] = new
            logits = model(x_new)
        new_margin = _margin(logits, y[rows])
        better = new_margin < margin[rows]
        window.index_copy_(0, rows[better], new[better])
        margin[rows[better]] = new_margin[better]
        if windowed:
            windowed.accept(better)
    return x_best, margin


def square_rows(model, x, norm: str, batch: int, bn_mode: str = "eval") -> int:
    """How many examples Square takes at once where an evaluation's batch is ``batch`` (``x``: one of them).

    With windowed queries (Linf, on the CPU), as many as keep ``WINDOWED_BYTES`` of layer inputs, never fewer than
    ``batch``: a query allocates crops, not whole layers, so the CPU's reason for small batches does not hold, and
    its fixed costs (a few dozen small operations) are shared by more rows. small_cnn's Square on 512 test images
    took 177 ms per example in batches of 64, 129 ms in one batch (benchmarks/square_windowed.py).
    """
    if x.dim() != 4:
        return batch
    with attack_mode(model, bn_mode), torch.no_grad():
        windowed = _windowed(model, norm)
        return batch if windowed is None else max(batch, WINDOWED_BYTES // windowed.kept_bytes(as_input(x)))


def square(model, x, y, norm: str, eps: float, n_queries: int = 5000, p_init: float = 0.8, restarts: int = 1,
           bn_mode: str = "eval", generator=None, rescale_schedule: bool = False) -> torch.Tensor:
    """Square Attack (Andriushchenko et al. 2020), Linf or L2: random search on the margin loss, no gradients."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"Square: norm must be 'linf' or 'l2', not {norm!r}")
    if x.dim() != 4:
        raise ValueError(f"Square: images shaped (N, C, H, W) expected, got {tuple(x.shape)}")
    with attack_mode(model, bn_mode), torch.no_grad():
        x, y = as_input(x), as_input(y)
        x_adv = x.clone()
        alive = (model(x).argmax(1) == y).nonzero().squeeze(1)
        draws = _Draws(generator, x.device)
        for restart in range(restarts):
            if alive.numel() == 0:
                break
            found, _ = _square_run(model, x[alive], y[alive], norm, eps, n_queries, p_init, rescale_schedule, draws)
            # Broken by the prediction, as the reference decides: a margin of exactly 0 may still be correct.
            broken = model(found).argmax(1) != y[alive]
            x_adv[alive[broken]] = found[broken]
            alive = alive[~broken]
            log.debug("Square %s restart %d: %d of %d left", norm, restart, alive.numel(), len(x))
        return x_adv
