"""Where each data set's tensors come from: IDX files, scikit-learn, torchvision or a generator.

Every loader returns a Source: train and test, each an ``(images, labels)`` pair (images uint8 in [0,255] or float
in [0,1], shaped (N, C, H, W)), and class names (None: the class indices are the names).
"""
import gzip
import logging
from pathlib import Path

import numpy as np
import torch

from advbench.data.source import Source
from advbench.errors import AdvbenchError

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # BadGzipFile is an OSError
        raise AdvbenchError(f"{path} cannot be read: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise AdvbenchError(f"{path} is not an IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise AdvbenchError(f"{path} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_split(directory: Path, prefix: str):
    images = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    labels = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    x = torch.from_numpy(read_idx(images).copy()).unsqueeze(1)
    return x, torch.from_numpy(read_idx(labels).astype(np.int64))


def fashion_mnist(cfg):
    """Fashion-MNIST from IDX files: data.root, then Debian's dataset-fashion-mnist, then torchvision's download."""
    root = Path(cfg.root).expanduser()
    candidates = [root / "fashion-mnist", root / "FashionMNIST" / "raw", root, DEBIAN_FASHION_MNIST]
    for directory in candidates:
        train, test = _idx_split(directory, "train"), _idx_split(directory, "t10k")
        if train and test:
            log.info("Fashion-MNIST from %s", directory)
            return Source(train, test, FASHION_MNIST_CLASSES)
    if cfg.download:
        import torchvision
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        raw = root / "FashionMNIST" / "raw"
        return Source(_idx_split(raw, "train"), _idx_split(raw, "t10k"), FASHION_MNIST_CLASSES)
    raise AdvbenchError(
        f"dataset=fashion_mnist: no IDX files under {', '.join(map(str, candidates))}; install them with "
        "`apt-get install dataset-fashion-mnist` or let torchvision fetch them with dataset.download=true")


def digits(cfg):
    """scikit-learn's bundled 8x8 digits (values 0..16), with a fixed stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    bunch = load_digits()
    x = torch.tensor(bunch.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.25, stratify=bunch.target,
                                           random_state=0)
    return Source((x[train_idx], y[train_idx]), (x[test_idx], y[test_idx]), [str(i) for i in range(10)])


def synthetic(cfg):
    """Learnable random data for tests: one random prototype image per class plus Gaussian noise."""
    g = torch.Generator().manual_seed(1234)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    prototypes = torch.rand(cfg.n_classes, *shape, generator=g)

    def sample(n):
        y = torch.arange(n) % cfg.n_classes
        x = prototypes[y] + cfg.noise * torch.randn(n, *shape, generator=g)
        return x.clamp(0, 1), y

    return Source(sample(cfg.n_train), sample(cfg.n_test))


def from_torchvision(cls_name: str, cfg):
    """torchvision's ``cls_name`` (MNIST, CIFAR10) from dataset.root, downloaded if dataset.download."""
    import torchvision
    cls = getattr(torchvision.datasets, cls_name)
    try:
        sets = [cls(str(Path(cfg.root).expanduser()), train=t, download=cfg.download) for t in (True, False)]
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise AdvbenchError(f"dataset={cls_name.lower()}: not found under dataset.root={cfg.root} ({err}); "
                            "set dataset.root to a local copy or dataset.download=true") from None
    out = []
    for s in sets:
        data = torch.as_tensor(np.asarray(s.data))
        data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # HWC -> CHW
        out.append((data.contiguous(), torch.as_tensor(np.asarray(s.targets), dtype=torch.int64)))
    return Source(*out, list(getattr(sets[0], "classes", None) or []) or None)
