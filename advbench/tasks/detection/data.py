"""Detection data sets: scenes composed from real classification images (digits, Fashion-MNIST), and the user's own
data in the YOLO or COCO layout. Each returns a Source whose targets are per-image {boxes (xyxy px), labels}."""

from advbench.data.scenes import composed
from advbench.data.source import Source
from advbench.errors import AdvbenchError
from advbench.tasks.detection.formats import read_coco, read_yolo


def digits_det(cfg) -> Source:
    """Scenes of scikit-learn's digits (16x16 items), with the stratified 75/25 split of dataset=digits."""
    return Source(*composed(cfg, "digits", "targets"))


def fashion_mnist_det(cfg) -> Source:
    """Scenes of Fashion-MNIST items: training scenes from its training split, test scenes from its test split."""
    return Source(*composed(cfg, "fashion_mnist", "targets"))


def _split(read, *args) -> tuple:
    found = read(*args)
    return (found["images"], found["targets"]), found["names"]


def yolo(cfg) -> Source:
    """An Ultralytics/YOLOv5 data set (``dataset.path``: its data YAML), letterboxed to ``dataset.image_size``.
    Its ``val:`` split validates; ``test:`` is the test split (without one, ``val:`` is, and validation is carved
    from ``train:``)."""
    if not cfg.path:
        raise AdvbenchError("dataset=yolo needs dataset.path=<the data set's YAML (train:, val:, names:)>")
    train, names = _split(read_yolo, cfg.path, "train", cfg.image_size)
    val, _ = _split(read_yolo, cfg.path, "val", cfg.image_size)
    try:
        test, _ = _split(read_yolo, cfg.path, "test", cfg.image_size)
    except AdvbenchError as err:
        if "no 'test:' entry" not in str(err):
            raise
        return Source(train, val, names)
    return Source(train, test, names, val=val)


def coco(cfg) -> Source:
    """COCO instances JSONs with their image folders (``dataset.train_json``/``train_images``, ``test_json``/
    ``test_images``, optionally ``val_json``/``val_images``), letterboxed to ``dataset.image_size``."""
    for key in ("train_json", "train_images", "test_json", "test_images"):
        if not cfg.get(key):
            raise AdvbenchError(f"dataset=coco needs dataset.{key}")
    train, names = _split(read_coco, cfg.train_json, cfg.train_images, cfg.image_size)
    test, test_names = _split(read_coco, cfg.test_json, cfg.test_images, cfg.image_size)
    if test_names != names:
        raise AdvbenchError(f"dataset.test_json has categories {test_names}, the training JSON {names}: they must "
                            "be the same")
    val = _split(read_coco, cfg.val_json, cfg.val_images, cfg.image_size)[0] if cfg.get("val_json") else None
    return Source(train, test, names, val=val)
