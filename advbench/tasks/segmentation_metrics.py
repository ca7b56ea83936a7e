"""Segmentation numbers: pixel accuracy, IoU per class from torchmetrics' confusion matrix, and the per-image
records an evaluation keeps to find each image's worst case."""
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

IGNORE = 255  # unlabelled pixels (VOC's boundaries, crop padding): in no loss and no metric


def pixel_accuracy(pred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image: the share of its labelled pixels predicted right (1 where it has none)."""
    valid = masks != IGNORE
    right = ((pred == masks) & valid).flatten(1).sum(1).float()
    count = valid.flatten(1).sum(1)
    return torch.where(count > 0, right / count.clamp_min(1), torch.ones_like(right))


def confusion(pred: torch.Tensor, masks: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The (classes, classes) confusion matrix (rows: truth) of predicted masks, IGNORE pixels left out."""
    return multiclass_confusion_matrix(pred.flatten(), masks.flatten(), n_classes, ignore_index=IGNORE)


def miou_of(matrix: torch.Tensor) -> tuple:
    """(mIoU over the classes present in the truth or the prediction, IoU per class (nan: absent)) of a confusion
    matrix."""
    matrix = matrix.double()
    inter = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))
    present = union > 0
    return (iou[present].mean().item() if present.any() else 1.0), iou


class Records:
    """Per image: the true mask, the clean prediction, the worst prediction so far (the lowest mIoU of the image),
    and after each attack the masks for its number: the worst case so far under the cascade (cumulative), the
    attack's own otherwise (clean where it did not attack). Masks are kept as uint8 on the CPU."""

    def __init__(self, attacks: list, n: int, n_classes: int, cascade: bool = True):
        self.n_classes, self.cascade = n_classes, cascade
        self.gt, self.clean, self.worst = [None] * n, [None] * n, [None] * n
        self.worst_miou = [1.0] * n
        self.after = {name: [None] * n for name in attacks}
        self.own = {}

    def _image_miou(self, pred, gt) -> float:
        return miou_of(confusion(pred, gt, self.n_classes))[0]

    def add_clean(self, indices, outputs, targets) -> None:
        """The clean predictions of the images ``indices``."""
        for i, p, t in zip(indices, outputs.argmax(1).cpu(), targets.cpu()):
            self.gt[i], self.clean[i], self.worst[i] = t.to(torch.uint8), p.to(torch.uint8), p.to(torch.uint8)
            self.worst_miou[i] = self._image_miou(p, t)

    def add_attack(self, indices, outputs) -> None:
        """An attack's predictions for the images it attacked: kept where they lower the image's mIoU."""
        for i, p in zip(indices, outputs.argmax(1).cpu()):
            p = p.to(torch.uint8)
            self.own[i] = p
            found = self._image_miou(p.long(), self.gt[i].long())
            if found < self.worst_miou[i]:
                self.worst[i], self.worst_miou[i] = p, found

    def close(self, name: str, indices) -> None:
        """Record attack ``name``'s masks of the images ``indices`` (see the class docstring)."""
        for i in indices:
            self.after[name][i] = self.worst[i] if self.cascade else self.own.get(i, self.clean[i])
        self.own = {}

    def scores(self, predictions: list, classes: list) -> dict:
        """mIoU, IoU per class (by name; null where a class is absent) and pixel accuracy of ``predictions``
        over all images: one confusion matrix for the set, as mIoU is defined."""
        matrix = sum(confusion(p.long(), t.long(), self.n_classes) for p, t in zip(predictions, self.gt))
        miou, iou = miou_of(matrix)
        total = matrix.sum().item()
        return {"miou": miou, "pixel_acc": matrix.diag().sum().item() / total if total else 1.0,
                "per_class": {name: (None if v != v else v) for name, v in zip(classes, iou.tolist())}}
