"""Data sets by name: each is registered by the task package it poses (tasks/registry.py), and gets a fixed
validation split (its own, or one carved from its training set)."""
from dataclasses import dataclass

import torch

from advbench.data import external
from advbench.errors import AdvbenchError
from advbench.tasks import registry

@dataclass
class Data:
    """The three splits of a data set, what a model needs to know about it, and the task it poses."""

    train: tuple
    val: tuple
    test: tuple
    shape: tuple
    n_classes: int
    task: str = "classification"
    vocab: list | None = None  # text: the training split's vocabulary; ids index it
    classes: list | None = None  # class names, index = label
    special: tuple = ()  # text: the ids of special tokens ([CLS], [SEP]), which attacks leave in place

    def model_kwargs(self, cfg) -> dict:
        """What a model factory takes besides shape and classes: the vocabulary size, or the normalization."""
        if self.vocab is not None:
            return {"vocab_size": len(self.vocab)}
        return {"mean": list(cfg.mean), "std": list(cfg.std)}


def model_tokenizer(dataset_cfg, model_cfg):
    """The data set's config, its ``tokenizer`` the model's own where the model reads a tokenizer's ids (model=hf)
    and ``dataset.tokenizer`` is not set: token ids from any other vocabulary would index the wrong embeddings."""
    own = model_cfg.get("tokenizer")
    if not own or dataset_cfg.get("tokenizer"):
        return dataset_cfg
    from omegaconf import OmegaConf
    # checked here, where the key the user set is known: model.tokenizer is model.name_or_path unless set apart
    key = "model.name_or_path" if own == model_cfg.get("name_or_path") else "model.tokenizer"
    from advbench.models.hf import local_path
    return OmegaConf.merge(dataset_cfg, {"tokenizer": local_path(own, key)})


task_of = registry.task_of


def take(targets, idx: torch.Tensor):
    """The targets of examples ``idx``: a label tensor indexed, or a list of per-example targets picked."""
    return targets[idx] if torch.is_tensor(targets) else [targets[i] for i in idx.tolist()]


def load_data(cfg) -> Data:
    """Load ``cfg.name``; validate on its own validation split or on a fixed one carved from its training set."""
    task = task_of(cfg)
    source = registry.sources()[cfg.name][0](cfg)
    if isinstance(source, external.RawSets):
        return _streamed(cfg, source, task)
    if external.augment_names(cfg.augment) not in ([], ["random_crop", "flip"], ["flip", "random_crop"]):
        raise AdvbenchError(f"dataset.augment={list(cfg.augment)}: dataset={cfg.name} is held in memory and "
                            "augments with random_crop and flip together (true); the other augmentations stream "
                            "(dataset=image_folder, torchvision, custom)")
    (x, y), test = source.train, source.test
    if cfg.n_train is not None:
        x, y = x[:cfg.n_train], y[:cfg.n_train]
    if source.val is None and not 0 <= cfg.val_size < len(x):
        raise AdvbenchError(f"dataset.val_size={cfg.val_size} must be in [0, {len(x)}) for dataset={cfg.name}")
    channels = x.shape[1]
    if source.vocab is None and (len(cfg.mean) != channels or len(cfg.std) != channels):
        raise AdvbenchError(f"dataset.mean/std have {len(cfg.mean)}/{len(cfg.std)} values for {channels}-channel "
                            f"images of dataset={cfg.name}: give one per channel")
    if source.val is None:
        # A fixed permutation, independent of the run's seed, so every run validates on the same examples.
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.split_seed))
        val_idx, train_idx = perm[:cfg.val_size], perm[cfg.val_size:]
        train, val = (x[train_idx], take(y, train_idx)), (x[val_idx], take(y, val_idx))
    else:
        train, val = (x, y), source.val
    task_cls = registry.task_class(task)
    task_cls.check_training_targets(train[1], cfg.name)
    n_classes = (len(source.classes) if source.classes
                 else max(task_cls.class_count(y), task_cls.class_count(test[1])))
    classes = list(source.classes) if source.classes else [str(i) for i in range(n_classes)]
    return Data(train=train, val=val, test=test, shape=tuple(x.shape[1:]), n_classes=n_classes, task=task,
                vocab=source.vocab, classes=classes, special=tuple(source.special))


def _streamed(cfg, source, task) -> Data:
    """A streamed data set's ``Data``: lazy splits (data/streams.py), classes from the source or the labels."""
    split = external.load_stream(cfg, source)
    channels = split["shape"][0]
    if len(cfg.mean) != channels or len(cfg.std) != channels:
        raise AdvbenchError(f"dataset.mean/std have {len(cfg.mean)}/{len(cfg.std)} values for {channels}-channel "
                            f"images of dataset={cfg.name}: give one per channel")
    task_cls = registry.task_class(task)
    task_cls.check_training_targets(split["labels"], cfg.name)
    classes = source.classes or [str(i) for i in range(task_cls.class_count(split["labels"]))]
    return Data(train=split["train"], val=split["val"], test=split["test"], shape=split["shape"],
                n_classes=len(classes), task=task, classes=classes)
