"""Hugging Face sequence classifiers (``model=hf``, pip install 'advbench[nlp]') behind advbench's text-model
interface: ``embedding(ids)`` and ``classify(embeddings)``.

advbench's token ids keep 0 for padding; a data set tokenized with the model's own tokenizer stores each id + 1,
negated in a pair's second segment (tasks/text/tokens.py). This adapter undoes both, zeroes the embeddings of padding,
and passes the attention mask (the non-zero positions) to the model: padding is never attended to and never
perturbed. Attacks and FreeLB move the word embeddings only; the model adds the position embeddings. Token types
ride in the embedding output: a second-segment token gets its type embedding's difference to type 0, and the
model, called without ``token_type_ids``, adds type 0 everywhere, so every token ends with word + its own type, as
with ``token_type_ids`` (tested against the model's own forward).
"""
from pathlib import Path

import torch
from torch import nn

from advbench.errors import AdvbenchError


def _token_types(model) -> nn.Embedding | None:
    """The segment embeddings of BERT-style models (two or more types), else None (RoBERTa has one, DistilBERT
    none)."""
    layer = getattr(getattr(model.base_model, "embeddings", None), "token_type_embeddings", None)
    return layer if isinstance(layer, nn.Embedding) and layer.num_embeddings > 1 else None


class ShiftedEmbedding(nn.Module):
    """The model's input embedding layer (``get_input_embeddings()``) read with advbench's shifted, signed ids."""

    def __init__(self, layer: nn.Embedding, types: nn.Embedding | None = None):
        super().__init__()
        self.layer = layer
        self.types = [types]  # a list: the layer is the model's, registered there, not a second time here

    @property
    def weight(self) -> torch.Tensor:  # the matrix the embedding-weights FGM recipe perturbs and restores
        return self.layer.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real, second = ids != 0, ids < 0
        emb = self.layer((ids.abs() - 1).clamp_min(0))
        types = self.types[0]
        if types is not None:  # no test of whether any token is second: that would sync the GPU every forward
            emb = emb + second[..., None].to(emb.dtype) * (types.weight[1] - types.weight[0])
        return emb * real[..., None].to(emb.dtype)


class HFClassifier(nn.Module):
    """An ``AutoModelForSequenceClassification`` with ``n_classes`` labels, seen through advbench's interface."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.embedding = ShiftedEmbedding(model.get_input_embeddings(), _token_types(model))

    def classify(self, emb: torch.Tensor) -> torch.Tensor:
        mask = (emb != 0).any(-1)  # padding embeddings are exactly zero (pinned by the task while attacking)
        return self.model(inputs_embeds=emb, attention_mask=mask.long()).logits

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embedding(ids))


def local_path(value: str, key: str) -> str:
    """``value`` (a folder or a hub id) as from_pretrained takes it: ``~`` expanded. A value that can only be a
    path (it starts with /, . or ~, or holds a backslash or more slashes than a hub id ``org/name``) and names no
    folder is an error naming ``key``: the hub would answer with its rules for repository ids instead."""
    text = str(value)
    expanded = Path(text).expanduser()
    path_like = text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text
    if path_like and not expanded.exists():
        raise AdvbenchError(f"{key}={text}: no such folder; expected a local folder saved by save_pretrained "
                            "(or a hub id such as org/name where the hub is reachable)")
    return str(expanded) if path_like else text


def hf_classifier(in_shape, n_classes: int, vocab_size: int | None = None, name_or_path: str | None = None,
                  tokenizer: str | None = None, **kwargs) -> nn.Module:
    """``name_or_path``: a local directory (config, weights, tokenizer) or a hub id where online. ``tokenizer`` is
    read by the data (``model_tokenizer``), not here."""
    try:
        from transformers import AutoModelForSequenceClassification
    except ImportError:
        raise AdvbenchError("model=hf needs the transformers package: pip install 'advbench[nlp]'") from None
    if not name_or_path:
        raise AdvbenchError("model=hf needs model.name_or_path=<a local model directory or a hub id>")
    where = local_path(name_or_path, "model.name_or_path")  # a missing folder: one line naming the key
    try:
        model = AutoModelForSequenceClassification.from_pretrained(where, num_labels=n_classes,
                                                                   ignore_mismatched_sizes=True, **kwargs)
    except (OSError, ValueError) as err:
        raise AdvbenchError(f"model.name_or_path={name_or_path}: {' '.join(str(err).split())[:200]}") from None
    return HFClassifier(model)
