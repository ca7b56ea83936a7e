"""Attacks on the embeddings of text models (Miyato et al. 2017): on the embedding output, or on the matrix."""
import torch
import torch.nn as nn

from advbench.attacks import pgd
from advbench.threats import THREATS


class FromEmbeddings(nn.Module):
    """A text model seen from its embedding output; ``pad`` (if given) pins padded positions to zero."""

    def __init__(self, model: nn.Module, pad: torch.Tensor | None = None):
        super().__init__()
        self.model, self.pad = model, pad

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:  # padding carries no perturbation: it stays padding
            emb = emb.masked_fill(self.pad[..., None], 0)
        return self.model.classify(emb)


def attack_embedding_output(attack, model, ids: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Adversarial embeddings: ``attack``'s steps (FGM: r = eps g / ||g||_2; PGD: projected steps; FGSM: sign)
    in the eps ball around the clean embeddings, with no [0,1] box; padded positions stay zero."""
    pad = ids == 0
    with torch.no_grad():
        emb = model.embedding(ids)
    threat = THREATS[attack.norm](attack.eps, attack.alpha, box=False)
    x_adv = pgd(FromEmbeddings(model, pad), emb, y, threat, attack.steps, attack.random_start, 1, False,
                attack.bn_mode)
    return x_adv.masked_fill(pad[..., None], 0)


def perturb_embedding_weights(embedding: nn.Embedding, eps: float):
    """FGM on the embedding matrix, the common NLP recipe: W += eps g / ||g||_2 with g = W.grad (the clean loss's
    gradient, already computed). Returns the exact backup to restore with ``restore_embedding_weights``."""
    backup = embedding.weight.detach().clone()
    grad = embedding.weight.grad
    norm = grad.norm() if grad is not None else torch.zeros(())
    if torch.isfinite(norm) and norm > 0:
        with torch.no_grad():
            embedding.weight.add_(eps * grad / norm)
    return backup


def restore_embedding_weights(embedding: nn.Embedding, backup: torch.Tensor) -> None:
    """Put the embedding matrix back, bit for bit."""
    with torch.no_grad():
        embedding.weight.copy_(backup)
