"""Text classification: token ids in, logits out; attacks perturb the embedding output (Miyato et al. 2017)."""
import torch
import torch.nn as nn

from advbench.runtime.distributed import bare
from advbench.tasks.classification import Classification


class FromEmbeddings(nn.Module):
    """A text model seen from its embedding output; ``pad`` (if given) pins padded positions to zero."""

    def __init__(self, model: nn.Module, pad: torch.Tensor | None = None):
        super().__init__()
        self.model, self.pad = model, pad

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:  # padding carries no perturbation: it stays padding
            emb = emb.masked_fill(self.pad[..., None], 0)
        return self.model.classify(emb)


class TextClassification(Classification):
    """Classification of token ids (0 = padding) by a model with ``embedding`` and ``classify(embeddings)``.

    Token ids cannot be perturbed, so an attack's point is the embedding output, with no [0,1] box; padded
    positions stay exactly zero.
    """

    name = "text classification"
    modes = ("standard", "mixed", "freelb", "smart")
    models = "textcnn, transformer or hf"
    perturbs = "embedding"
    evaluates_with_training_attack = True
    draws_examples = False

    def __init__(self, n_classes: int, classes: list | None = None, vocab: list | None = None):
        super().__init__(n_classes, classes)
        self.vocab = vocab

    @classmethod
    def build(cls, data, evaluation=None) -> "TextClassification":
        return cls(data.n_classes, data.classes, data.vocab)

    def write_saliency(self, model, test, attack, mode, settings, device, out) -> tuple:
        """task=saliency: each token's gradient norm, as saliency.html and saliency_text.png."""
        from advbench.evaluation.token_saliency import write_text_saliency
        return write_text_saliency(model, test, self, self.vocab, settings.n_examples, device, out)

    def view(self, model, ids):
        """(the model from its embeddings, padding pinned; the clean embeddings, constant)."""
        with torch.no_grad():
            emb = model.embedding(ids)
        return FromEmbeddings(model, ids == 0), emb

    def finish(self, view_model, x_adv):
        """The attack's result with padded positions zeroed."""
        return x_adv.masked_fill(view_model.pad[..., None], 0)

    def forward_perturbed(self, model, ids, emb_adv):
        """Logits at the adversarial embeddings, with the embedding layer in the graph: its gradient flows
        through the clean embeddings, the perturbation being a constant of the update."""
        net = bare(model)
        emb = net.embedding(ids)
        return net.classify(emb + (emb_adv - emb).detach())

    def forward_pair(self, model, ids, emb_adv):
        """Clean logits (the full model) and adversarial logits (from the embeddings)."""
        return model(ids), self.forward_perturbed(model, ids, emb_adv)
