"""Loaders that batch in-memory tensors with one index per batch, and the batch augmentation they apply.

On CUDA the uint8 images live on the device once and each batch is indexed, converted and augmented there: no
per-batch copy from the host. The random draws (order, crops, flips) stay on the CPU generator, so a run
shuffles and augments the same way on every device and a resume restores them exactly."""
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
    top = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator).to(x.device, non_blocking=True)
    left = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator).to(x.device, non_blocking=True)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device, non_blocking=True)
    rows = (top + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (left + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    cols = torch.where(flip.view(n, 1, 1, 1), cols.flip(-1), cols)
    images, channels = torch.arange(n, device=x.device), torch.arange(c, device=x.device)
    return padded[images.view(n, 1, 1, 1), channels.view(1, c, 1, 1), rows, cols]


def _index(targets, idx):
    return targets[idx]


def _same(x):
    return x


class TensorLoader:
    """Iterates (x, targets) batches of in-memory tensors; x comes out float in [0,1]. ``index(targets, idx)``
    selects a batch's targets (a task's own indexing: a label vector, a list of per-image boxes...);
    ``augment(x, targets, generator)`` (a task's) transforms a batch and its targets together; ``trim(x)`` (a
    task's) cuts a batch to what its examples use (text: dynamic padding). With a CUDA ``device`` the images (and
    tensor targets) are moved there once."""

    def __init__(self, x, targets, batch_size: int, shuffle: bool = False, generator=None, augment=None,
                 rank: int = 0, world_size: int = 1, index=_index, device=None, trim=_same):
        if device is not None and torch.device(device).type == "cuda":
            x = x.to(device)
            targets = targets.to(device) if torch.is_tensor(targets) else targets
        self.x, self.targets, self.batch_size, self.index, self.trim = x, targets, batch_size, index, trim
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
        # Moved once an epoch, not once a batch: on a GPU each copy is a launch, and the text step is launch-bound.
        on_x, on_targets = order.to(self.x.device), order.to(self._targets_device())
        for start in range(0, n, self.batch_size):
            x, targets = self.rows(on_x[start:start + self.batch_size], on_targets[start:start + self.batch_size])
            yield self.augment(x, targets, self.generator) if self.augment else (x, targets)

    def _targets_device(self) -> torch.device:
        return self.targets.device if torch.is_tensor(self.targets) else torch.device("cpu")

    def rows(self, idx: torch.Tensor, target_idx: torch.Tensor | None = None):
        """The examples ``idx`` (a tensor of indices) as one batch, unaugmented: (x in [0,1], targets);
        ``target_idx``: the same indices already on the targets' device."""
        x = self.trim(to_unit(self.x[idx.to(self.x.device, non_blocking=True)]))
        target_idx = idx if target_idx is None else target_idx
        return x, self.index(self.targets, target_idx.to(self._targets_device(), non_blocking=True))
