"""FGM and PGD on the embedding matrix of text models: the NLP competitions' recipe (after Miyato et al. 2017, L2
in the Frobenius norm of the matrix). Attacks on the embedding output are ordinary attacks in the text task's view
(``tasks/text/``)."""
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


def move_embedding_weights(embedding: nn.Module, eps: float, alpha: float | None = None) -> torch.Tensor:
    """The recipe's first step along g = W.grad (the clean loss's gradient): FGM (``alpha`` None) W + eps g/||g||_F,
    PGD W + alpha g/||g||_F within Frobenius distance eps of W. The moved matrix is a new tensor swapped in as W's
    data; the clean one, returned, is never written, so ``put_back_embedding_weights`` restores it bit for bit
    without the backup copy and the copy back that the recipe as usually written spends on it."""
    weight = embedding.weight
    clean, grad = weight.data, weight.grad
    if grad is None:
        return clean
    if alpha is None:
        # eps g / ||g|| + W, bit for bit the recipe's W + eps g / ||g||, in one new tensor. With no Python branch on
        # the norm (a GPU sync): a zero gradient (0/0) or a non-finite one (an fp16 overflow the scaler will skip)
        # gives NaN or 0 everywhere, which nan_to_num makes a step of 0; a finite g with a finite, positive norm
        # gives finite values, left as they are.
        weight.data = grad.mul(eps).div_(grad.norm()).nan_to_num_(0.0, 0.0, 0.0).add_(clean)
    else:
        weight.data = clean.clone()
        ascend_embedding_weights(embedding, grad, alpha, eps, clean)
    return clean


def put_back_embedding_weights(embedding: nn.Module, clean: torch.Tensor) -> None:
    """W's clean data back in place (what ``move_embedding_weights`` returned): a swap, no copy."""
    embedding.weight.data = clean
