"""The users' own image data, streamed: an image folder (``dataset=image_folder``), any torchvision data set class
(``dataset=torchvision dataset.class_name=CIFAR100``), or map-style data sets of (image, label) built by
``_target_`` (``dataset=custom``)."""
import inspect
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

from advbench.data.formats import image_size
from advbench.data.streams import AUGMENTS, Mapped, Stream, labels_of, transforms
from advbench.errors import AdvbenchError, unimportable

log = logging.getLogger(__name__)


@dataclass
class RawSets:
    """A streamed data set's splits as the user's code gives them (examples (image, label)), and class names."""

    train: object
    test: object
    val: object = None
    classes: list | None = None


def _folder(path, key: str):
    import torchvision
    if not path:
        raise AdvbenchError(f"dataset.{key} is not set: give the folder of one sub-folder per class")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise AdvbenchError(f"dataset.{key}={path}: no such folder")
    try:
        return torchvision.datasets.ImageFolder(str(directory))
    except (FileNotFoundError, RuntimeError) as err:
        raise AdvbenchError(f"dataset.{key}={path}: {' '.join(str(err).split())[:160]}") from None


def image_folder(cfg) -> RawSets:
    """torchvision's ImageFolder over dataset.train_dir, test_dir and (optional) val_dir; class names from the
    sub-folder names, the same in every split."""
    train, test = _folder(cfg.train_dir, "train_dir"), _folder(cfg.test_dir, "test_dir")
    val = _folder(cfg.val_dir, "val_dir") if cfg.val_dir else None
    for key, split in (("test_dir", test), ("val_dir", val)):
        if split is not None and split.classes != train.classes:
            raise AdvbenchError(f"dataset.{key}: its classes ({', '.join(split.classes)}) differ from train_dir's "
                                f"({', '.join(train.classes)}); every split needs the same sub-folders")
    _check_headers({"train_dir": train, "val_dir": val, "test_dir": test}, cfg.resize)
    return RawSets(train, _fixed_order(test, cfg.split_seed), val and _fixed_order(val, cfg.split_seed),
                   list(train.classes))


def _fixed_order(folder, seed: int):
    """``folder``'s images in a fixed random order (``dataset.split_seed``): ImageFolder lists them class by class,
    so its first ``eval.n_examples`` would all be of the first classes."""
    perm = torch.randperm(len(folder.samples), generator=torch.Generator().manual_seed(seed)).tolist()
    folder.samples = folder.imgs = [folder.samples[i] for i in perm]
    folder.targets = [label for _, label in folder.samples]
    return folder


def _check_headers(splits: dict, resize) -> None:
    """Every image's header, read before training (Pillow decodes no pixels): an unreadable file, or without
    ``dataset.resize`` a size other than the first image's, is a one-line error naming the file, where a DataLoader
    worker would otherwise stop the run with a traceback at the first batch holding it."""
    first, chunk = None, 4096  # chunks: a million-image folder never queues a million futures
    with ThreadPoolExecutor(8) as pool:  # headers are small reads: threads hide the file system's latency
        for key, split in splits.items():
            paths = [path for path, _ in split.samples] if split is not None else []
            for start in range(0, len(paths), chunk):
                part = paths[start:start + chunk]
                for path, size in zip(part, pool.map(image_size, part)):
                    if resize:
                        continue
                    if first is None:
                        first = (path, size)
                    elif size != first[1]:
                        raise AdvbenchError(f"dataset.{key}: {path} is {size[0]}x{size[1]} but {first[0]} is "
                                            f"{first[1][0]}x{first[1][1]}; images of different sizes need "
                                            "dataset.resize=<n> (the square side every image is resized and "
                                            "centre-cropped to)")
    log.info("image headers checked: %d files", sum(len(s.samples) for s in splits.values() if s is not None))


def held_out(full, cfg) -> tuple:
    """(train, test) of a data set without splits: a fixed permutation (dataset.split_seed) holds out
    dataset.test_size of its examples as the test split, never trained on; logged as a warning."""
    n = len(full)
    n_test = round(cfg.test_size * n)
    if not 0 < n_test < n:
        raise AdvbenchError(f"dataset.test_size={cfg.test_size}: holds out {n_test} of the {n} examples of "
                            f"dataset.class_name={cfg.class_name}, which has no test split; give a share that "
                            "leaves examples for both splits")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed)).tolist()
    log.warning("dataset.class_name=%s has no train/test split (it takes neither train= nor split=): %d of its %d "
                "examples are held out as the test split (dataset.test_size=%s, drawn with dataset.split_seed=%d), "
                "the other %d make the training set", cfg.class_name, n_test, n, cfg.test_size, cfg.split_seed,
                n - n_test)
    return Subset(full, perm[n_test:]), Subset(full, perm[:n_test])


def torchvision_sets(cfg) -> RawSets:
    """``torchvision.datasets.<dataset.class_name>`` from dataset.root with dataset.kwargs; its train and test
    splits by ``train=`` or ``split=`` (dataset.train_split / test_split), whichever the class takes; a class that
    takes neither gets a test split held out of its examples (``held_out``), never the training set again."""
    import torchvision
    cls = getattr(torchvision.datasets, str(cfg.class_name), None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.utils.data.Dataset)):
        raise AdvbenchError(f"dataset.class_name={cfg.class_name!r} is not a torchvision.datasets class (e.g. "
                            "CIFAR100, SVHN, STL10, ImageNet, FakeData)")
    params = inspect.signature(cls).parameters
    kwargs = dict(cfg.kwargs or {})
    if "download" in params:
        kwargs["download"] = cfg.download
    if "root" in params:
        kwargs["root"] = str(Path(cfg.root).expanduser())

    def split(name: str):
        if "train" in params:
            return cls(train=name == "train", **kwargs)
        return cls(split=name, **kwargs)
    try:
        if "train" in params or "split" in params:
            full, train, test = None, split(cfg.train_split), split(cfg.test_split)
        else:
            full = cls(**kwargs)
    except (RuntimeError, FileNotFoundError, ValueError, TypeError) as err:
        raise AdvbenchError(f"dataset.class_name={cfg.class_name}: {' '.join(str(err).split())[:200]} (root "
                            f"{cfg.root}; download={cfg.download})") from None
    if full is not None:
        train, test = held_out(full, cfg)
    return RawSets(train, test, None, list(getattr(full or train, "classes", None) or []) or None)


def custom(cfg) -> RawSets:
    """dataset.train_set, test_set (and optional val_set): each a ``_target_`` building a map-style data set of
    (image, label) pairs, images as PIL images or CHW tensors."""
    from hydra.utils import instantiate
    if not cfg.train_set or not cfg.test_set:
        raise AdvbenchError("dataset=custom needs dataset.train_set and dataset.test_set, each a {_target_: ...} "
                            "building a map-style data set of (image, label)")
    try:
        built = {key: instantiate(cfg[key]) if cfg[key] else None for key in ("train_set", "test_set", "val_set")}
    except Exception as err:  # Hydra wraps the import error and the data set's own
        if unimportable(err):
            raise unimportable(err) from None
        raise AdvbenchError(f"dataset=custom: {' '.join(str(err).split())[:200]}") from None
    classes = getattr(built["train_set"], "classes", None)
    return RawSets(built["train_set"], built["test_set"], built["val_set"], list(classes) if classes else None)


def augment_names(augment) -> list:
    """dataset.augment as a list of names: true is [random_crop, flip]; false or null is none."""
    if augment in (None, False):
        return []
    names = ["random_crop", "flip"] if augment is True else list(augment)
    unknown = [n for n in names if n not in AUGMENTS]
    if unknown:
        raise AdvbenchError(f"dataset.augment: {', '.join(map(str, unknown))} unknown; expected true, false or a "
                            f"list of {', '.join(AUGMENTS)}")
    return names


def load_stream(cfg, raw: RawSets) -> dict:
    """The splits of a streamed data set (validation carved from the training set by a fixed permutation where
    it has none), its image shape and classes. The training split also carries its augmented view."""
    workers = cfg.workers
    plain = transforms(cfg.resize, [])
    train_plain, test = Mapped(raw.train, plain), Mapped(raw.test, plain)
    if len(train_plain) == 0 or len(test) == 0:
        raise AdvbenchError(f"dataset={cfg.name}: the {'training' if len(train_plain) == 0 else 'test'} split "
                            "holds no examples")
    shape = tuple(train_plain[0][0].shape)
    augmented = Mapped(raw.train, transforms(cfg.resize, augment_names(cfg.augment), shape))
    keep = range(min(cfg.n_train, len(train_plain)) if cfg.n_train is not None else len(train_plain))
    if raw.val is not None:
        train_idx, val = list(keep), Mapped(raw.val, plain)
    else:
        if not 0 <= cfg.val_size < len(keep):
            raise AdvbenchError(f"dataset.val_size={cfg.val_size} must be in [0, {len(keep)}) for "
                                f"dataset={cfg.name}")
        perm = torch.randperm(len(keep), generator=torch.Generator().manual_seed(cfg.split_seed)).tolist()
        val, train_idx = Subset(train_plain, perm[:cfg.val_size]), perm[cfg.val_size:]
    train = Stream(Subset(train_plain, train_idx), workers)
    train.augmented = Subset(augmented, train_idx)
    return {"train": train, "val": Stream(val, workers), "test": Stream(test, workers), "shape": shape,
            "labels": labels_of(train.dataset), "test_labels": labels_of(test)}
