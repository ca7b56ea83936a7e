"""Text classifiers whose first layer is an ``nn.Embedding``: ``forward(ids) = classify(embedding(ids))``.

``classify`` takes embeddings, so attacks can perturb the embedding output. Padding (id 0) embeds to an all-zero
vector, and ``classify`` treats all-zero positions as padding.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class TokenEmbedding(nn.Embedding):
    """An embedding of token ids (0: padding) that reads a pair's second segment, stored negative
    (tasks/text/tokens.py), as its plain ids: these models have no segment embeddings; the <sep> token marks the
    boundary."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids.abs())


def padding_mask(emb: torch.Tensor) -> torch.Tensor:
    """True at padded positions: their embedding is exactly zero."""
    return emb.detach().abs().amax(-1) == 0


class TextCNN(nn.Module):
    """Kim 2014: embeddings, parallel 1-d convolutions of several widths, max over time, dropout, linear."""

    def __init__(self, in_shape, n_classes, vocab_size, dim: int = 64, widths=(3, 4, 5), channels: int = 64,
                 dropout: float = 0.5):
        super().__init__()
        self.embedding = TokenEmbedding(vocab_size, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, w, padding=w // 2) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(channels * len(widths), n_classes)

    def classify(self, emb: torch.Tensor) -> torch.Tensor:
        pad = padding_mask(emb)
        h = emb.transpose(1, 2)
        pooled = [F.relu(conv(h))[..., :emb.shape[1]].masked_fill(pad[:, None], -1e4).amax(-1)
                  for conv in self.convs]
        return self.linear(self.dropout(torch.cat(pooled, 1)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embedding(ids))


class TransformerClassifier(nn.Module):
    """A small Transformer encoder (Vaswani et al. 2017) over embeddings plus sinusoidal positions, mean-pooled."""

    def __init__(self, in_shape, n_classes, vocab_size, dim: int = 64, heads: int = 4, layers: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.embedding = TokenEmbedding(vocab_size, dim, padding_idx=0)
        position = torch.arange(in_shape[0])[:, None] * torch.exp(-math.log(1e4) * torch.arange(0, dim, 2) / dim)
        self.register_buffer("positions", torch.cat([position.sin(), position.cos()], 1)[:, :dim])
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.linear = nn.Linear(dim, n_classes)

    def classify(self, emb: torch.Tensor) -> torch.Tensor:
        pad = padding_mask(emb)
        pad = pad & ~pad.all(1, keepdim=True)  # an empty text attends to its padding rather than to nothing
        h = self.encoder(emb + self.positions[:emb.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).float()[..., None]
        return self.linear((h * keep).sum(1) / keep.sum(1).clamp_min(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embedding(ids))
