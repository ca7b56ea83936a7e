"""Detection under attack: per-image recall (what "still correct" means), each image's worst-case predictions, mAP
(torchmetrics' COCO evaluation) and the rates that say how an attack won: vanished, mislabeled, hallucinated."""
import logging

import torch

from advbench.tasks import records

logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # its per-call tables would flood the run's log
IOU = 0.5  # a prediction matches an object at IoU >= 0.5 (the mAP@0.5 criterion)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torchvision's pairwise IoU, imported on first use: every task package loads with the registry, and a run
    without detection then starts without torchvision (about 2 s)."""
    from torchvision.ops import box_iou as iou
    return iou(a, b)


def confident(pred: dict, score: float) -> dict:
    """The predictions with a score of at least ``score``."""
    keep = pred["scores"] >= score
    return {k: v[keep] for k, v in pred.items()}


def matched(pred: dict, target: dict, same_class: bool = True) -> torch.Tensor:
    """Per ground-truth object: whether some prediction overlaps it at IoU >= 0.5 (with its class, if asked).

    Greedy by score, each prediction used once, as VOC/COCO matching does.
    """
    n = len(target["labels"])
    found = torch.zeros(n, dtype=torch.bool)
    if n == 0 or len(pred["labels"]) == 0:
        return found
    iou = box_iou(pred["boxes"].float().cpu(), target["boxes"].float().cpu())
    if same_class:
        iou = iou * (pred["labels"].cpu()[:, None] == target["labels"].cpu()[None, :])
    for i in pred["scores"].cpu().argsort(descending=True).tolist():
        free = (iou[i] >= IOU) & ~found
        if free.any():
            found[int((iou[i] * free).argmax())] = True
    return found


def recall(pred: dict, target: dict, score: float) -> float:
    """The share of an image's objects found with their class among its confident predictions (1 if none)."""
    n = len(target["labels"])
    return 1.0 if n == 0 else matched(confident(pred, score), target).float().mean().item()


def strength(pred: dict, target: dict, score: float) -> tuple:
    """How well an image is still detected, worst first when sorted: its recall, then the mean confidence of the
    best right-class prediction over each object (what an attack that lowers scores without losing objects lowers,
    and average precision with it)."""
    n = len(target["labels"])
    if n == 0:
        return 1.0, 1.0
    if len(pred["labels"]) == 0:
        return 0.0, 0.0
    iou = box_iou(pred["boxes"].float().cpu(), target["boxes"].float().cpu())
    fits = (iou >= IOU) & (pred["labels"].cpu()[:, None] == target["labels"].cpu()[None, :])
    best = (fits * pred["scores"].cpu()[:, None]).amax(0)
    return recall(pred, target, score), best.mean().item()


class Records(records.Records):
    """Per image (see tasks/records.py): predictions as boxes, labels and scores; an image's worst case is the
    lowest recall, then the lowest confidence in its objects."""

    def __init__(self, attacks: list, n: int, score: float, cascade: bool = True):
        super().__init__(attacks, n, cascade)
        self.score = score

    def predictions(self, outputs) -> list:
        return _on_cpu(outputs.predictions())

    def truths(self, targets) -> list:
        return _on_cpu(targets)

    def rank(self, pred, gt) -> tuple:
        return strength(pred, gt, self.score)


def _on_cpu(items: list) -> list:
    return [{k: v.detach().cpu() for k, v in item.items()} for item in items]


def mean_ap(predictions: list, targets: list, classes: list) -> dict:
    """mAP@0.5, mAP@0.5:0.95 and AP@0.5 per class (by name) of ``predictions`` against ``targets``."""
    preds = [{k: p[k].detach().cpu() for k in ("boxes", "scores", "labels")} for p in predictions]
    gts = [{k: t[k].cpu() for k in ("boxes", "labels")} for t in targets]
    from torchmetrics.detection import MeanAveragePrecision  # seconds to import: only where mAP is computed
    overall = MeanAveragePrecision(iou_type="bbox", backend="faster_coco_eval")
    overall.update(preds, gts)
    found = overall.compute()
    # torchmetrics' per-class AP is over IoU 0.5:0.95; at IoU 0.5 alone it needs its own evaluation
    at50 = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], class_metrics=True,
                                backend="faster_coco_eval")
    at50.update(preds, gts)
    per_class = at50.compute()
    names = {int(c): (classes[int(c)] if int(c) < len(classes) else str(int(c)))
             for c in per_class["classes"].flatten().tolist()}
    return {"map50": max(found["map_50"].item(), 0.0), "map": max(found["map"].item(), 0.0),
            "ap50_per_class": {names[int(c)]: (ap if ap >= 0 else None) for c, ap in
                               zip(per_class["classes"].flatten().tolist(),
                                   per_class["map_per_class"].flatten().tolist())}}


def rates(records: Records, names: list) -> dict:
    """How the worst-case attacks won, over the objects found clean: the share that vanished (no prediction
    overlaps them any more) or were mislabeled (overlapped only by other classes); and the confident predictions
    matching no object, added per image by the attack."""
    found = vanished = mislabeled = added = 0
    for gt, clean, worst in zip(records.gt, records.clean, records.worst):
        clean_c, worst_c = confident(clean, records.score), confident(worst, records.score)
        before = matched(clean_c, gt)
        still = matched(worst_c, gt)
        overlapped = matched(worst_c, gt, same_class=False)
        found += int(before.sum())
        vanished += int((before & ~overlapped).sum())
        mislabeled += int((before & overlapped & ~still).sum())
        added += max(0, _false(worst_c, gt) - _false(clean_c, gt))
    n_images = max(len(records.gt), 1)
    return {"objects_found_clean": found, "vanished": vanished / max(found, 1),
            "mislabeled": mislabeled / max(found, 1), "hallucinated_per_image": added / n_images}


def _false(pred: dict, gt: dict) -> int:
    """Confident predictions that overlap no object at IoU >= 0.5."""
    if len(pred["labels"]) == 0:
        return 0
    if len(gt["labels"]) == 0:
        return len(pred["labels"])
    return int((box_iou(pred["boxes"].float().cpu(), gt["boxes"].float().cpu()).amax(1) < IOU).sum())
