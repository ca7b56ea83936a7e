"""Segmentation numbers: pixel accuracy, IoU per class from torchmetrics' confusion matrix, and the per-image
records an evaluation keeps to find each image's worst case."""
import torch

from advbench.tasks import records

IGNORE = 255  # unlabelled pixels (VOC's boundaries, crop padding): in no loss and no metric
# Names of a class 0 that is background (the composed sets and VOC name it so): *_miou_no_background leaves it out.
BACKGROUND = ("background", "bg", "_background_")


def has_background(classes) -> bool:
    """Whether the data set's class 0 is background, by its name (the first of ``classes``)."""
    return bool(classes) and str(classes[0]).strip().lower() in BACKGROUND


def pixel_accuracy(pred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image: the share of its labelled pixels predicted right (1 where it has none)."""
    valid = masks != IGNORE
    right = ((pred == masks) & valid).flatten(1).sum(1).float()
    count = valid.flatten(1).sum(1)
    return torch.where(count > 0, right / count.clamp_min(1), torch.ones_like(right))


def confusion(pred: torch.Tensor, masks: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The (classes, classes) confusion matrix (rows: truth) of predicted masks, IGNORE pixels left out."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix  # seconds to import
    return multiclass_confusion_matrix(pred.flatten(), masks.flatten(), n_classes, ignore_index=IGNORE)


def miou_of(matrix: torch.Tensor) -> tuple:
    """(mIoU over the classes present in the truth or the prediction, IoU per class (nan: absent)) of a confusion
    matrix; the mIoU is None when the matrix counts no pixel (nothing was scored, so nothing was right)."""
    matrix = matrix.double()
    inter = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))
    present = union > 0
    return (iou[present].mean().item() if present.any() else None), iou


class Records(records.Records):
    """Per image (see tasks/records.py): masks, kept as uint8 on the CPU; an image's worst case is its lowest
    mIoU."""

    def __init__(self, attacks: list, n: int, n_classes: int, cascade: bool = True):
        super().__init__(attacks, n, cascade)
        self.n_classes = n_classes

    def predictions(self, outputs) -> list:
        return list(outputs.argmax(1).to(torch.uint8).cpu())

    def truths(self, targets) -> list:
        return list(targets.to(torch.uint8).cpu())

    def rank(self, pred, gt) -> float:
        miou = miou_of(confusion(pred.long(), gt.long(), self.n_classes))[0]
        return 1.0 if miou is None else miou  # an image with no labelled pixel: every outcome ties

    def scored(self) -> torch.Tensor:
        """Per image: whether it has a labelled pixel (an image without one can be neither right nor wrong)."""
        return torch.tensor([bool((t != IGNORE).any()) for t in self.gt], dtype=torch.bool)

    def scores(self, predictions: list, classes: list) -> dict:
        """mIoU, IoU per class (by name; null where a class is absent) and pixel accuracy of ``predictions``
        over all images: one confusion matrix for the set, as mIoU is defined. None (not 100%) where no pixel
        is labelled."""
        matrix = sum(confusion(p.long(), t.long(), self.n_classes) for p, t in zip(predictions, self.gt))
        miou, iou = miou_of(matrix)
        total = matrix.sum().item()
        rest = iou[1:][~iou[1:].isnan()]  # the classes after class 0 that occur (in truth or prediction)
        return {"miou": miou, "pixel_acc": matrix.diag().sum().item() / total if total else None,
                "miou_no_background": rest.mean().item() if has_background(classes) and len(rest) else None,
                "per_class": {name: (None if v != v else v) for name, v in zip(classes, iou.tolist())}}
