"""Data sets too large to hold in memory: an image folder, any torchvision data set class, or any map-style
``Dataset`` of (image, label) built by ``_target_``. They stream through ``torch.utils.data.DataLoader`` (workers,
pinned memory, prefetch) as uint8 batches, converted to [0,1] on the device.

A ``Stream`` is the (images, labels) pair the in-memory sets are, made lazy: ``stream[0][:n]`` loads the first n
examples once (evaluation and validation read their declared number of examples this way), so the code that
takes ``(x, y)`` pairs works on both without knowing which it has.
"""
import logging
import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, Subset

from advbench.data.loaders import to_unit

log = logging.getLogger(__name__)
AUGMENTS = ("random_crop", "flip", "random_resized_crop", "color_jitter", "rotation")


def transforms(resize: int | None, augment: list, size: tuple | None = None):
    """The per-image pipeline (torchvision.transforms.v2): optional resize and centre crop, the named
    augmentations, then a uint8 CHW tensor."""
    from torchvision.transforms import v2
    steps = [v2.ToImage()]
    if resize:
        steps += [v2.Resize(resize, antialias=True), v2.CenterCrop(resize)]
    side = resize or (size[-1] if size else None)
    named = {"random_crop": lambda: v2.RandomCrop(side, padding=4), "flip": v2.RandomHorizontalFlip,
             "random_resized_crop": lambda: v2.RandomResizedCrop(side, antialias=True),
             "color_jitter": lambda: v2.ColorJitter(0.2, 0.2, 0.2), "rotation": lambda: v2.RandomRotation(10)}
    steps += [named[name]() for name in augment]
    return v2.Compose(steps + [v2.ToDtype(torch.uint8, scale=True)])


class Mapped(Dataset):
    """``dataset``'s examples as (uint8 CHW tensor, int label), through ``transform``."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i][:2]
        return self.transform(image), int(label)


def labels_of(dataset) -> torch.Tensor:
    """All labels of ``dataset`` (from its ``targets`` or ``labels`` list where it keeps one, else by reading)."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    if isinstance(dataset, Mapped):
        return labels_of(dataset.dataset)
    for name in ("targets", "labels"):
        if hasattr(dataset, name):
            return torch.as_tensor(getattr(dataset, name), dtype=torch.int64)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)


class Stream(tuple):
    """A lazy (images, labels) pair over a map-style data set: each column loads a prefix on demand."""

    def __new__(cls, dataset, workers: int = 2):
        stream = super().__new__(cls, (_Column(None, 0), _Column(None, 1)))
        stream.dataset, stream.workers, stream._cache = dataset, workers, None
        for column in stream:
            column.stream = stream
        return stream

    def first(self, n: int | None) -> tuple:
        """The first ``n`` examples (all: None) as (uint8 images, labels), loaded once and kept."""
        n = len(self.dataset) if n is None else min(n, len(self.dataset))
        if self._cache is None or len(self._cache[1]) < n:
            loader = DataLoader(Subset(self.dataset, range(n)), batch_size=256, num_workers=self.workers)
            xs, ys = zip(*loader) if n else ((), ())
            self._cache = (torch.cat(xs), torch.cat(ys)) if n else (torch.empty(0, dtype=torch.uint8),
                                                                    torch.empty(0, dtype=torch.int64))
            log.info("loaded the first %d of %d examples", n, len(self.dataset))
        return self._cache[0][:n], self._cache[1][:n]


class _Column:
    def __init__(self, stream, which: int):
        self.stream, self.which = stream, which

    def __len__(self):
        return len(self.stream.dataset)

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.start not in (None, 0) or key.step not in (None, 1):
            raise TypeError("a streamed split loads prefixes only: [:n]")
        return self.stream.first(key.stop)[self.which]


class StreamLoader:
    """Batches of a ``Stream`` through a DataLoader (its augmented view with ``augment``): shuffled by
    ``generator``, spread over ranks, moved as uint8 and converted to [0,1] on ``device``.

    ``generator`` is the only random state of the data: each epoch draws a seed and an order from it, and every
    example is read under its own seed (the epoch's and its index). What a worker draws thus depends neither on
    which worker reads the example nor on how long the worker has lived, so a run comes out the same for any
    ``workers`` and a resume that restores ``generator`` repeats the uninterrupted run's epochs exactly."""

    def __init__(self, stream: Stream, batch_size: int, generator, device, rank: int = 0, world_size: int = 1,
                 augment: bool = False):
        dataset, workers = _Seeded(stream.augmented if augment else stream.dataset), stream.workers
        if world_size > 1:  # every rank draws the same permutation and takes its own slice of it
            dataset = _RankSlice(dataset, rank, world_size)
        cuda = torch.device(device).type == "cuda"
        self.device = device
        # The DataLoader draws its workers' base seed from its own generator whenever an iterator starts (once
        # per run with persistent workers, so a resume would draw it one epoch late): a private generator keeps
        # that draw off ``generator`` and torch's global state; the per-example seeds make it irrelevant.
        self.loader = DataLoader(dataset, batch_size, sampler=_EpochSampler(dataset, generator),
                                 generator=torch.Generator().manual_seed(0), num_workers=workers,
                                 pin_memory=cuda, persistent_workers=workers > 0,
                                 prefetch_factor=4 if workers else None, drop_last=False)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield to_unit(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)


class _EpochSampler(Sampler):
    """A shuffled epoch as (index, epoch seed) pairs: the seed and then the order drawn from ``generator`` (the
    draws the DataLoader made with it before, so runs without augmentation keep their order)."""

    def __init__(self, dataset, generator):
        self.order = RandomSampler(dataset, generator=generator)
        self.generator = self.order.generator

    def __len__(self):
        return len(self.order)

    def __iter__(self):
        seed = torch.empty((), dtype=torch.int64).random_(generator=self.generator).item()
        for i in self.order:
            yield i, seed


_MASK = (1 << 64) - 1


def example_seed(epoch_seed: int, index: int) -> int:
    """A seed for one example of one epoch (splitmix64 of the pair: torch keeps only a seed's low 32 bits, so
    nearby pairs must not give nearby seeds)."""
    z = (epoch_seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


@contextmanager
def seeded(seed: int):
    """Torch's CPU generator, Python's and NumPy's global ones seeded with ``seed`` inside, restored after (with
    workers=0 the examples are read in the training process, whose draws must not move)."""
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that would reseed CUDA too
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])


class _Seeded(Dataset):
    """``dataset`` read at (index, epoch seed) keys, each example under its own seed."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch_seed = key
        with seeded(example_seed(epoch_seed, index)):
            return self.dataset[index]


class _RankSlice(Dataset):
    def __init__(self, dataset, rank: int, world_size: int):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size

    def __len__(self):
        return len(self.dataset) // self.world_size

    def __getitem__(self, key):
        i, epoch_seed = key
        return self.dataset[i * self.world_size + self.rank, epoch_seed]
