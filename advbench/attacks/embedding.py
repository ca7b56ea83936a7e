"""FGM and PGD on the embedding matrix of text models: the NLP competitions' recipe (after Miyato et al. 2017, L2
in the Frobenius norm of the matrix). Attacks on the embedding output are ordinary attacks in the text task's view
(``tasks/text.py``)."""
import torch
import torch.nn as nn


def ascend_embedding_weights(embedding: nn.Embedding, grad: torch.Tensor, alpha: float, eps: float,
                             clean: torch.Tensor | None = None) -> None:
    """One step of the recipe: W += alpha g / ||g||_F; with ``clean`` (PGD), W is then pulled back within Frobenius
    distance ``eps`` of it. FGM is one step with alpha = eps, which lies on the ball: nothing to project."""
    norm = grad.norm()
    with torch.no_grad():
        # No Python branch on a norm: a GPU sync per step costs more than the step on small models. A zero or
        # non-finite gradient (an fp16 overflow the scaler will skip) moves nothing.
        embedding.weight.add_(torch.where(torch.isfinite(norm) & (norm > 0), alpha * grad / norm, 0))
        if clean is not None:
            r = embedding.weight - clean
            r_norm = r.norm()
            embedding.weight.copy_(torch.where(r_norm > eps, clean + r * (eps / r_norm), embedding.weight))


def perturb_embedding_weights(embedding: nn.Embedding, eps: float, alpha: float | None = None):
    """The recipe's first step, from g = W.grad (the clean loss's gradient, already computed): FGM (``alpha``
    None) W += eps g/||g||_F; PGD W += alpha g/||g||_F within Frobenius distance eps of W. Returns the exact
    backup to restore with ``restore_embedding_weights`` (and to project later steps on)."""
    backup = embedding.weight.detach().clone()
    if embedding.weight.grad is not None:
        ascend_embedding_weights(embedding, embedding.weight.grad, eps if alpha is None else alpha, eps,
                                 None if alpha is None else backup)
    return backup


def restore_embedding_weights(embedding: nn.Embedding, backup: torch.Tensor) -> None:
    """Put the embedding matrix back, bit for bit."""
    with torch.no_grad():
        embedding.weight.copy_(backup)
