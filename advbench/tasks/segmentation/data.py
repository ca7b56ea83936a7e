"""Segmentation data sets: the detection scenes with a class mask per pixel (background 0, class k as k + 1), and
the users' own masks (an images/ and a masks/ folder) or Pascal VOC from a local root. Targets are (N, H, W)
int64 masks, IGNORE (255) where unlabelled."""
from pathlib import Path

import numpy as np
import torch

from advbench.data.scenes import composed
from advbench.data.formats import DataError, decoded
from advbench.data.source import Source
from advbench.errors import AdvbenchError
from advbench.tasks.segmentation.metrics import IGNORE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_MODES = ("L", "P", "I", "I;16")  # Pillow's modes of one integer per pixel (8, 16 or 32 bits)


def _canvases(cfg, items: str) -> Source:
    """The detection sets' composed scenes (data/scenes.py) with their masks as targets: each item's own
    pixels (above the composer's foreground threshold) marked with its class + 1, background 0."""
    (x, masks), (x_test, masks_test), classes = composed(cfg, items, "masks")
    return Source((x, masks.long()), (x_test, masks_test.long()), ["background", *classes])


def digits_seg(cfg) -> Source:
    """Canvases of scikit-learn's digits, with the stratified 75/25 split of dataset=digits."""
    return _canvases(cfg, "digits")


def fashion_mnist_seg(cfg) -> Source:
    """Canvases of Fashion-MNIST items: training canvases from its training split, test ones from its test split."""
    return _canvases(cfg, "fashion_mnist")


def read_pair(image_path: Path, mask_path: Path, size: int, ignore_index: int) -> tuple:
    """An image (uint8 (3, size, size)) and its mask of class indices (int64 (size, size), nearest), both resized
    to size x size; ``ignore_index`` in the mask becomes IGNORE. A mask must have its image's size: resized apart,
    a mask of another size would mark the wrong pixels."""
    from PIL import Image
    image = decoded(image_path, "RGB")
    mask = decoded(mask_path)
    if mask.mode not in MASK_MODES:
        raise DataError(f"{mask_path}: a mask holds class indices (mode L or P, or 16/32-bit I), not {mask.mode} "
                        "colours")
    if mask.size != image.size:
        raise DataError(f"{mask_path}: the mask is {mask.size[0]}x{mask.size[1]} but its image {image_path.name} is "
                        f"{image.size[0]}x{image.size[1]}; a mask needs its image's size")
    image = image.resize((size, size), Image.BILINEAR)
    mask = np.asarray(mask.resize((size, size), Image.NEAREST)).astype(np.int64)
    mask[mask == ignore_index] = IGNORE
    # 32-bit masks can hold negative values, which no class has, or billions, which would make as many classes
    bad = mask[(mask < 0) | (mask > 65535)]
    if bad.size:
        raise DataError(f"{mask_path}: mask value {bad[0]} is no class index; accepted: 0..65535, and "
                        f"dataset.ignore_index={ignore_index} for unlabelled pixels")
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), torch.from_numpy(mask)


def _read_pairs(root: Path, size: int, ignore_index: int) -> tuple:
    """images/<name>.<ext> and masks/<name>.png (class indices) under ``root``, as ``read_pair`` reads them."""
    files = sorted(p for p in (root / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AdvbenchError(f"dataset.path: no images under {root / 'images'}")
    xs, ms = [], []
    for f in files:
        mask_path = root / "masks" / f"{f.stem}.png"
        if not mask_path.is_file():
            raise AdvbenchError(f"dataset.path: {f.name} has no mask {mask_path} (a PNG of class indices)")
        x, m = read_pair(f, mask_path, size, ignore_index)
        xs.append(x)
        ms.append(m)
    return torch.stack(xs), torch.stack(ms)


def seg_folder(cfg) -> Source:
    """``dataset.path``/{train,test,val}/images and masks (the same file names; masks as class-index PNGs),
    resized to ``dataset.image_size``; class names from ``dataset.categories`` (else 0..max)."""
    if not cfg.path:
        raise AdvbenchError("dataset=seg_folder needs dataset.path=<a folder with train/ and test/, each holding "
                            "images/ and masks/>")
    root = Path(cfg.path).expanduser()
    for split in ("train", "test"):
        if not (root / split / "images").is_dir():
            raise AdvbenchError(f"dataset.path={cfg.path}: no {split}/images folder")
    train, test = (_read_pairs(root / s, cfg.image_size, cfg.ignore_index) for s in ("train", "test"))
    val = _read_pairs(root / "val", cfg.image_size, cfg.ignore_index) if (root / "val" / "images").is_dir() else None
    top = int(max(m[m != IGNORE].max().item() if (m != IGNORE).any() else 0 for _, m in (train, test)))
    classes = list(cfg.categories) or [str(i) for i in range(top + 1)]
    if top >= len(classes):
        raise AdvbenchError(f"dataset.categories names {len(classes)} classes; the masks hold class {top}")
    return Source(train, test, classes, val=val)


VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]


def voc(cfg) -> Source:
    """torchvision's VOCSegmentation (``dataset.root``, year 2012: train and val; VOC's own 255 boundaries are
    IGNORE), resized to ``dataset.image_size``."""
    import torchvision
    from PIL import Image
    splits = []
    for split in ("train", "val"):
        try:
            data = torchvision.datasets.VOCSegmentation(str(Path(cfg.root).expanduser()), year="2012",
                                                        image_set=split, download=cfg.download)
        except RuntimeError as err:
            raise AdvbenchError(f"dataset=voc: not found under dataset.root={cfg.root} ({err}); put VOCdevkit/"
                                "VOC2012 there or set dataset.download=true") from None
        size = cfg.image_size
        xs, ms = [], []
        for image, mask in data:
            xs.append(torch.from_numpy(np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR)).copy())
                      .permute(2, 0, 1))
            ms.append(torch.from_numpy(np.asarray(mask.resize((size, size), Image.NEAREST)).astype(np.int64)))
        splits.append((torch.stack(xs), torch.stack(ms)))
    return Source(splits[0], splits[1], VOC_CLASSES)
