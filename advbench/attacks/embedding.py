"""FGM on the embedding matrix of text models (the common NLP recipe after Miyato et al. 2017, L2). Attacks on
the embedding output are ordinary attacks in the text task's view (``tasks/text.py``)."""
import torch
import torch.nn as nn


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
