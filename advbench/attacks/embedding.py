"""FGM on the embedding matrix of text models (the common NLP recipe after Miyato et al. 2017, L2). Attacks on
the embedding output are ordinary attacks in the text task's view (``tasks/text.py``)."""
import torch
import torch.nn as nn


def perturb_embedding_weights(embedding: nn.Embedding, eps: float):
    """FGM on the embedding matrix, the common NLP recipe: W += eps g / ||g||_2 with g = W.grad (the clean loss's
    gradient, already computed). Returns the exact backup to restore with ``restore_embedding_weights``."""
    backup = embedding.weight.detach().clone()
    grad = embedding.weight.grad
    if grad is not None:
        norm = grad.norm()
        # No Python branch on the norm: a GPU sync per step costs more than the step on small models. A zero or
        # non-finite gradient (an fp16 overflow the scaler will skip) moves nothing.
        with torch.no_grad():
            embedding.weight.add_(torch.where(torch.isfinite(norm) & (norm > 0), eps * grad / norm, 0))
    return backup


def restore_embedding_weights(embedding: nn.Embedding, backup: torch.Tensor) -> None:
    """Put the embedding matrix back, bit for bit."""
    with torch.no_grad():
        embedding.weight.copy_(backup)
