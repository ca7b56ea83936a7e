"""Semantic segmentation: a class per pixel, mIoU under attack (metrics.py), mask readers (data.py) and figures
(plots.py)."""
from advbench.tasks.registry import register
from advbench.tasks.segmentation import data
from advbench.tasks.segmentation.task import Segmentation

register("segmentation", Segmentation, {"digits_seg": data.digits_seg, "fashion_mnist_seg": data.fashion_mnist_seg,
                                        "seg_folder": data.seg_folder, "voc": data.voc})

__all__ = ["Segmentation"]
