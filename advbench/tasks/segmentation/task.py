"""Semantic segmentation: a class index per pixel as targets (IGNORE where unlabelled), the mean per-pixel
cross-entropy as the loss (SegPGD's and CosPGD's weightings as attack objectives), pixel accuracy as "still
correct", mIoU as the metric."""
import torch
import torch.nn.functional as F

from advbench.errors import AdvbenchError
from advbench.tasks.base import Task, worst_case
from advbench.tasks.segmentation.metrics import IGNORE, Records, has_background, miou_of, pixel_accuracy


def _per_pixel_ce(logits, masks) -> torch.Tensor:
    return F.cross_entropy(logits.float(), masks, ignore_index=IGNORE, reduction="none")


def _image_mean(values, masks) -> torch.Tensor:
    """Per image: the mean of ``values`` over its labelled pixels (0 where it has none)."""
    valid = (masks != IGNORE).float()
    return (values * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


class Segmentation(Task):
    """Targets: (N, H, W) int64 class masks, IGNORE (255) where unlabelled. Outputs: (N, classes, H, W) logits.

    An image counts as broken (for the cascade and the restarts) when its pixel accuracy falls below
    ``broken_below`` (eval.seg_threshold); its worst case is the attack outcome with the lowest mIoU of that
    image. Robust mIoU is computed over every image's worst case (and is never above an attack's own).
    """

    name = "segmentation"
    terms = ("ce",)
    metrics = ("clean_miou", "robust_miou")
    modes = ("standard", "adversarial", "mixed", "free")
    models = ("unet_tiny", "torchvision_segmenter")
    scores_training = True  # pixel accuracy >= threshold per image is cheap

    def __init__(self, n_classes: int = 0, classes: list | None = None, broken_below: float = 0.75,
                 n_examples: int | None = None):
        super().__init__(n_classes, classes)
        self.broken_below, self.n_examples = broken_below, n_examples

    @classmethod
    def configured(cls, evaluation=None) -> "Segmentation":
        """eval.seg_threshold (an image is broken below this pixel accuracy); eval.n_examples (checked by bind)."""
        if evaluation is None:
            return cls()
        return cls(broken_below=evaluation.seg_threshold, n_examples=evaluation.n_examples)

    @classmethod
    def class_count(cls, targets) -> int:
        """The largest labelled pixel's class + 1."""
        return super().class_count(targets[targets != IGNORE])

    def bind(self, data) -> "Segmentation":
        """The classes; refused when the test images evaluated have no labelled pixel (every score would be of
        nothing), before a model is built or trained."""
        n = self.n_examples
        masks = data.test[1][:n]
        if torch.is_tensor(masks) and len(masks) and not (masks != IGNORE).any():
            raise AdvbenchError(f"the {len(masks)} test masks evaluated (eval.n_examples={n}) have no labelled "
                                f"pixel: every pixel is the ignore value (dataset.ignore_index), so there is nothing "
                                "to score; check the masks and dataset.ignore_index")
        val = data.val[1]
        if torch.is_tensor(val) and len(val) and not (val != IGNORE).any():  # model selection would see 100%
            raise AdvbenchError(f"the {len(val)} validation masks (the val/ split or dataset.val_size) have no labelled pixel: every "
                                "pixel is the ignore value (dataset.ignore_index), so validation would score nothing")
        return super().bind(data)

    def augment(self, x, masks, generator):
        """Random crop after 4-pixel padding and horizontal flip of image and mask together (one draw): the mask
        rides as an extra channel, shifted by one so that the padding comes out as IGNORE."""
        from advbench.data.loaders import random_crop_flip
        both = random_crop_flip(torch.cat([x, (masks[:, None] + 1).to(x.dtype)], 1), generator)
        masks = both[:, -1].round().long() - 1
        return both[:, :-1], masks.masked_fill(masks < 0, IGNORE)

    # --- losses -----------------------------------------------------------------------------------------------
    def loss(self, outputs, targets) -> dict:
        """Per image: the mean cross-entropy over its labelled pixels."""
        return {"ce": _image_mean(_per_pixel_ce(outputs, targets), targets)}

    def objective(self, name: str = "loss", weights: dict | None = None, steps: int = 1, **kwargs):
        """What an attack ascends, per image: ``loss``/``ce`` the mean pixel cross-entropy; ``segpgd`` SegPGD's
        (Gu et al. 2022) (1 - l_t) CE over correctly and l_t CE over wrongly classified pixels, l_t = (t - 1)
        / 2T over the attack's ``steps``; ``cospgd`` CosPGD's (Agnihotri et al. 2024) pixel CE weighted by the
        cosine similarity of the softmax prediction and the one-hot target."""
        if name in ("loss", "ce"):
            self.check_terms(weights)
            return lambda outputs, masks: self.loss(outputs, masks)["ce"]
        if name == "segpgd":
            calls = [0]

            def segpgd(outputs, masks):
                t = calls[0] % steps + 1  # restarts run ``steps`` calls each
                calls[0] += 1
                lam = (t - 1) / (2 * steps)
                ce = _per_pixel_ce(outputs, masks)
                right = (outputs.argmax(1) == masks).float()
                return _image_mean(((1 - lam) * right + lam * (1 - right)) * ce, masks)
            return segpgd
        if name == "cospgd":
            def cospgd(outputs, masks):
                probs, classes = outputs.float().softmax(1), outputs.shape[1]
                onehot = F.one_hot(masks.clamp(0, classes - 1), classes).permute(0, 3, 1, 2)
                cos = F.cosine_similarity(probs, onehot.float(), dim=1).detach()
                return _image_mean(cos * _per_pixel_ce(outputs, masks), masks)
            return cospgd
        raise AdvbenchError(f"attack.loss={name} is not defined for segmentation: expected ce, segpgd or cospgd")

    def correct(self, outputs, targets) -> torch.Tensor:
        """Per image: pixel accuracy (over labelled pixels) at least ``broken_below``."""
        return pixel_accuracy(outputs.argmax(1), targets) >= self.broken_below

    def random_wrong(self, model, x, masks):
        """A targeted attack's goal: every labelled pixel of an image relabeled to one random other class."""
        classes = self.n_classes or self.predict(model, x[:1]).shape[1]  # the API's task knows no class count
        shift = torch.randint(1, classes, (len(masks), 1, 1), device=masks.device)
        return torch.where(masks == IGNORE, masks, (masks + shift) % classes)

    def labels(self, outputs) -> list:
        return outputs.argmax(1)

    # --- evaluation -------------------------------------------------------------------------------------------
    def new_records(self, attacks: list, n: int, cascade: bool = True) -> Records:
        """Per image: predicted masks (clean, worst, after each attack), for mIoU."""
        return Records(attacks, n, self.n_classes, cascade)

    def summarize(self, flags: dict, records: Records | None = None) -> dict:
        """mIoU, per-class IoU and pixel accuracy, clean and under each attack (cumulative under the cascade) and
        of every image's worst case; the share of images still at least ``broken_below`` pixel-accurate."""
        names = [name for name in flags if name != "clean"]
        clean = records.scores(records.clean, self.classes)
        background = has_background(self.classes)  # class 0 is background: also each mIoU without it
        out = {"n_examples": len(records.gt), "clean_miou": clean["miou"], "clean_pixel_acc": clean["pixel_acc"]}
        out |= {"clean_miou_no_background": clean["miou_no_background"]} if background else {}
        if not names:
            return out | {"robust_miou": None, "robust_miou_by_attack": {}, "iou_per_class": {
                "clean": clean["per_class"]}}
        if clean["miou"] is None:  # no labelled pixel: nothing was scored, so no number at all (never 100%)
            return out | {"robust_miou": None, "robust_pixel_acc": None,
                          "robust_miou_by_attack": dict.fromkeys(names),
                          "iou_per_class": {"clean": clean["per_class"]}, "images_still_correct": None}
        by_attack = {name: records.scores(records.after[name], self.classes) for name in names}
        scored = records.scored().to(flags["clean"].device)
        # mIoU does not split over images: the set of per-image worst cases can score above one attack's own
        # masks. Each of these (and the clean masks: no perturbation is in the ball too) is a real outcome, and
        # the robust number is the lowest of them.
        robust = min([records.scores(records.worst, self.classes), *by_attack.values(), clean],
                     key=lambda m: m["miou"])
        # without background: of the same prediction set as robust_miou, so that the two differ by class 0 alone
        out |= {"robust_miou_no_background": robust["miou_no_background"], "robust_miou_no_background_by_attack": {
            name: m["miou_no_background"] for name, m in by_attack.items()}} if background else {}
        return out | {
            "robust_miou": robust["miou"], "robust_pixel_acc": robust["pixel_acc"],
            "robust_miou_by_attack": {name: m["miou"] for name, m in by_attack.items()},
            "iou_per_class": {"clean": clean["per_class"], "robust": robust["per_class"]},
            # over the images with a labelled pixel: one without is neither right nor wrong
            "images_still_correct": worst_case(flags)[scored].float().mean().item(),
        }

    def metric_definitions(self) -> dict:
        """How mIoU averages (over classes, over the whole split), with and without background."""
        found = {
            "clean_miou": "mean over classes of IoU = TP / (TP + FP + FN), from one confusion matrix summed over "
                          "every labelled pixel of the test images (not a mean of per-image mIoUs); the mean takes "
                          "the classes present in the ground truth or the prediction, class 0 included; pixels "
                          "labelled 255 are left out",
            "robust_miou": "the lowest mIoU of these prediction sets: each image's worst case (lowest per-image "
                           "mIoU) over the attacks, each attack's own (robust_miou_by_attack: with "
                           "eval.cascade=true cumulative over the attacks before it), and the clean one",
            "images_still_correct": "share of images with a labelled pixel whose pixel accuracy stays >= "
                                    "seg_threshold after every attack",
            "seg_threshold": self.broken_below,
        }
        if has_background(self.classes):
            found["clean_miou_no_background"] = ("clean_miou over the classes after class 0 (background, by the "
                                                 "data set's first class name): the same matrix, class 0 left out "
                                                 "of the mean only (its pixels still count as other classes' FP/FN)")
            found["robust_miou_no_background"] = "robust_miou's prediction set, class 0 left out of the mean"
        return found

    def plot_examples(self, x, x_adv, targets, clean_outputs, adv_outputs, path, notes=None, title: str = "") -> None:
        """adversarial_examples.png: image, true mask, clean and adversarial predictions, the perturbation."""
        from advbench.tasks.segmentation.plots import plot_segmentations
        plot_segmentations(x, x_adv, targets, clean_outputs.argmax(1), adv_outputs.argmax(1), self.classes, path,
                           title)

    def write_saliency(self, model, test, attack, mode, settings, device, out) -> tuple:
        """job=saliency: masks and predictions beside |dL/dx|, SmoothGrad and Grad-CAM (saliency.method=gradcam)."""
        from advbench.tasks.segmentation.saliency import write_segmentation_saliency
        return write_segmentation_saliency(model, test, attack, self, mode, settings, device, out)


__all__ = ["Segmentation", "miou_of"]
