"""Object detection: per-image boxes and labels, named loss terms, mAP under attack (metrics.py), box-aware
augmentation, YOLO and COCO readers (formats.py, data.py) and figures (plots.py)."""
from advbench.tasks.detection import data
from advbench.tasks.detection.task import Detection
from advbench.tasks.registry import register

register("detection", Detection, {"digits_det": data.digits_det, "fashion_mnist_det": data.fashion_mnist_det,
                                  "yolo": data.yolo, "coco": data.coco})

__all__ = ["Detection"]
