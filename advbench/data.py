"""In-memory data: train/validation/test splits and a loader that batches tensors with one index per batch."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from advbench.errors import AdvbenchError
from advbench.sources import SOURCES
from advbench.text import TEXT_SOURCES, build_vocab, encode


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images as float in [0,1], whether stored as uint8 or float; token ids (int64) pass unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    return x.float() if x.is_floating_point() else x


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, for a whole batch at once."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    rows = (top + torch.arange(h)).view(n, 1, h, 1)
    cols = (left + torch.arange(w)).view(n, 1, 1, w)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip.view(n, 1, 1, 1), cols.flip(-1), cols)
    return padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]


class TensorLoader:
    """Iterates (x, y) batches of in-memory tensors; x comes out float in [0,1]."""

    def __init__(self, x, y, batch_size: int, shuffle: bool = False, generator=None, augment: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.generator, self.augment = shuffle, generator, augment
        self.rank, self.world_size = rank, world_size

    def _n(self) -> int:
        return len(self.y) // self.world_size  # every rank gets as many examples, so as many batches

    def __len__(self):
        return -(-self._n() // self.batch_size)

    def __iter__(self):
        n = self._n()
        order = torch.randperm(len(self.y), generator=self.generator) if self.shuffle else torch.arange(len(self.y))
        # Every rank draws the same permutation (same seed) and takes its own slice of it.
        order = order[:n * self.world_size][self.rank::self.world_size]
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = to_unit(self.x[idx])
            yield (random_crop_flip(x, self.generator) if self.augment else x), self.y[idx]


@dataclass
class Data:
    """The three splits of a data set, and what a model needs to know about it."""

    train: tuple
    val: tuple
    test: tuple
    shape: tuple
    n_classes: int
    vocab: list | None = None  # text: the training split's vocabulary; ids index it
    classes: list | None = None  # class names, index = label
    @property
    def is_text(self) -> bool:
        return self.vocab is not None

    def model_kwargs(self, cfg) -> dict:
        """What a model factory takes besides shape and classes: normalization, or the vocabulary size."""
        if self.is_text:
            return {"vocab_size": len(self.vocab)}
        return {"mean": list(cfg.mean), "std": list(cfg.std)}


def _encode_text(cfg, train, test):
    """Texts to padded token ids, with a vocabulary built from the training texts only."""
    vocab = build_vocab(train[0], cfg.max_vocab, cfg.min_freq)
    as_ids = [(encode(texts, vocab, cfg.max_len), torch.tensor(labels, dtype=torch.int64))
              for texts, labels in (train, test)]
    return as_ids[0], as_ids[1], vocab


def load_data(cfg) -> Data:
    """Load ``cfg.name`` and carve a fixed validation split from its training set."""
    sources = SOURCES | TEXT_SOURCES
    if cfg.name not in sources:
        raise AdvbenchError(f"dataset.name={cfg.name!r} is unknown: expected one of {', '.join(sources)}")
    (x, y), test, classes = sources[cfg.name](cfg)
    vocab = None
    if cfg.name in TEXT_SOURCES:
        (x, y), test, vocab = _encode_text(cfg, (x, y), test)
    if cfg.n_train is not None:
        x, y = x[:cfg.n_train], y[:cfg.n_train]
    if not 0 <= cfg.val_size < len(y):
        raise AdvbenchError(f"dataset.val_size={cfg.val_size} must be in [0, {len(y)}) for dataset={cfg.name}")
    channels = x.shape[1]
    if vocab is None and (len(cfg.mean) != channels or len(cfg.std) != channels):
        raise AdvbenchError(f"dataset.mean/std have {len(cfg.mean)}/{len(cfg.std)} values for {channels}-channel "
                            f"images of dataset={cfg.name}: give one per channel")
    # A fixed permutation, independent of the run's seed, so every run validates on the same examples.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, train_idx = perm[:cfg.val_size], perm[cfg.val_size:]
    present = torch.unique(y[train_idx])
    if len(present) < 2:
        raise AdvbenchError(f"dataset={cfg.name}: the training split holds {len(present)} class; a classifier "
                            "needs at least 2 (check dataset.categories, the label column or dataset.n_train)")
    n_classes = int(max(y.max(), test[1].max())) + 1
    classes = list(classes) if classes else [str(i) for i in range(n_classes)]
    return Data(train=(x[train_idx], y[train_idx]), val=(x[val_idx], y[val_idx]), test=test,
                shape=tuple(x.shape[1:]), n_classes=n_classes, vocab=vocab, classes=classes)
