"""Loaders that batch in-memory tensors with one index per batch, and the batch augmentation they apply."""
import torch
import torch.nn.functional as F


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


def _index(targets, idx):
    return targets[idx]


class TensorLoader:
    """Iterates (x, targets) batches of in-memory tensors; x comes out float in [0,1]. ``index(targets, idx)``
    selects a batch's targets (a task's own indexing: a label vector, a list of per-image boxes...);
    ``augment(x, targets, generator)`` (a task's) transforms a batch and its targets together."""

    def __init__(self, x, targets, batch_size: int, shuffle: bool = False, generator=None, augment=None,
                 rank: int = 0, world_size: int = 1, index=_index):
        self.x, self.targets, self.batch_size, self.index = x, targets, batch_size, index
        self.shuffle, self.generator, self.augment = shuffle, generator, augment
        self.rank, self.world_size = rank, world_size

    def _n(self) -> int:
        return len(self.x) // self.world_size  # every rank gets as many examples, so as many batches

    def __len__(self):
        return -(-self._n() // self.batch_size)

    def __iter__(self):
        n = self._n()
        n_all = len(self.x)
        order = torch.randperm(n_all, generator=self.generator) if self.shuffle else torch.arange(n_all)
        # Every rank draws the same permutation (same seed) and takes its own slice of it.
        order = order[:n * self.world_size][self.rank::self.world_size]
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = to_unit(self.x[idx])
            targets = self.index(self.targets, idx)
            yield self.augment(x, targets, self.generator) if self.augment else (x, targets)
