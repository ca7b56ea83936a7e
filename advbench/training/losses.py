"""The training objectives of the literature, as plain functions of logits."""
import torch
import torch.nn.functional as F


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p(x) || p(x_adv)), TRADES's robust regularizer (Zhang et al. 2019)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="none").sum(1)


def trades_loss(logits_clean, logits_adv, y, beta: float) -> torch.Tensor:
    """TRADES: CE(clean) + beta * mean KL(p(x) || p(x_adv))."""
    return F.cross_entropy(logits_clean, y) + beta * trades_kl(logits_clean, logits_adv).mean()


def trades_attack_loss(logits_adv: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """What TRADES's attack ascends: per-example KL(p_clean || p(x_adv)), ``p_clean`` fixed."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_clean, reduction="none").sum(1)


def mart_boosted_ce(logits_adv, y) -> torch.Tensor:
    """MART's first term, per example: CE on x_adv plus a margin term against the most likely wrong class."""
    p_adv = F.softmax(logits_adv, dim=1)
    top2 = p_adv.argsort(dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    return (F.cross_entropy(logits_adv, y, reduction="none")
            + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), wrong, reduction="none"))


def mart_weighted_kl(logits_clean, logits_adv, y) -> torch.Tensor:
    """MART's second term, per example: KL(p(x) || p(x_adv)) weighted by 1 - p_y(x)."""
    p_adv, p_clean = F.softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p_clean, reduction="none").sum(1)
    return kl * (1.0000001 - p_clean.gather(1, y[:, None]).squeeze(1))


def mart_loss(logits_clean, logits_adv, y, beta: float) -> torch.Tensor:
    """MART (Wang et al. 2020): boosted CE on x_adv + beta * KL(p(x) || p(x_adv)) weighted by 1 - p_y(x)."""
    return mart_boosted_ce(logits_adv, y).mean() + beta * mart_weighted_kl(logits_clean, logits_adv, y).mean()
