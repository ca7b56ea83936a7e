"""Object detection: per-image boxes and labels as targets, a detector's named loss terms (box, obj, cls),
recall as "still correct", mAP as the metric."""
import torch
from torch.utils._pytree import tree_map

from advbench.errors import AdvbenchError
from advbench.tasks.base import Task, worst_case
from advbench.tasks.detection.metrics import Records, confident, mean_ap, rates, recall


def _empty(device) -> dict:
    return {"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.int64, device=device)}


class Detection(Task):
    """Targets: a list of per-image {"boxes": (k, 4) xyxy pixels, "labels": (k,)}. The model's forward returns
    outputs with ``loss(targets) -> {box, obj, cls}`` and ``predictions()`` (models/detector.py).

    An image counts as broken (for the cascade and the restarts) when its recall at IoU 0.5, over predictions
    scoring at least ``score``, falls below ``broken_below``; its worst case is the attack that lowered its recall
    most (then its objects' confidence). Robust mAP is the lowest mAP among the real attack outcomes: the
    per-image worst cases, and each attack's own predictions.
    """

    name = "detection"
    crafts_goals = True
    terms = ("box", "obj", "cls", "dfl")
    metrics = ("clean_map50", "robust_map50")
    modes = ("standard", "adversarial", "mixed", "free", "mtd")
    models = ("yolo_tiny", "torchvision_detector", "ultralytics_yolo", "yolov5")
    pads_batches = False  # outputs are per-image predictions, not rows: compile=auto leaves detectors eager
    scores_training = False  # per-step NMS to count found images would cost more than the step: the loss terms say

    def __init__(self, n_classes: int = 0, classes: list | None = None, score: float = 0.25,
                 broken_below: float = 0.5, n_examples: int | None = None):
        super().__init__(n_classes, classes)
        self.score, self.broken_below, self.n_examples = score, broken_below, n_examples

    @classmethod
    def configured(cls, evaluation=None) -> "Detection":
        """eval.det_score (a detection counts from this score), eval.det_recall (an image is broken below it) and
        eval.n_examples (checked by bind)."""
        if evaluation is None:
            return cls()
        return cls(score=evaluation.det_score, broken_below=evaluation.det_recall,
                   n_examples=evaluation.get("n_examples"))

    def bind(self, data) -> "Detection":
        """The classes; refused when the test images evaluated, or the validation images, hold no object (mAP
        would score nothing, as 0.00%), before a model is built or trained."""
        n = self.n_examples
        for targets, which in ((data.test[1][:n], f"test images evaluated (eval.n_examples={n})"),
                               (data.val[1], "validation images (the val split or dataset.val_size)")):
            if isinstance(targets, list) and targets and not any(len(t["labels"]) for t in targets):
                raise AdvbenchError(f"the {len(targets)} {which} hold no labelled object, so mAP would score "
                                    "nothing; check the label files or annotations (an image without a label file "
                                    "has no objects)")
        return super().bind(data)

    @classmethod
    def check_training_targets(cls, targets, dataset: str) -> None:
        """At least one labelled object: a detector's classes exclude the background, so one class is a task."""
        if not any(len(t["labels"]) for t in targets):
            raise AdvbenchError(f"dataset={dataset}: the training split holds no labelled object; a detector needs "
                                "at least 1 (check the label files or annotations, and dataset.n_train)")

    @classmethod
    def class_count(cls, targets) -> int:
        """The largest object label + 1."""
        return max((int(t["labels"].max()) + 1 for t in targets if len(t["labels"])), default=0)

    # --- targets ----------------------------------------------------------------------------------------------
    def index(self, targets, idx):
        return [targets[i] for i in idx.tolist()]

    def to(self, targets, device):
        return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]

    def detach(self, targets):
        return tree_map(lambda v: (v.clone() if v.is_inference() else v.detach()) if torch.is_tensor(v) else v,
                        targets)

    def augment(self, x, targets, generator):
        """Random horizontal flip and a shift of up to 1/8 of the image, boxes moved with the pixels."""
        from advbench.data.box_augment import random_flip, random_translate
        x, targets, _ = random_flip(x, targets, generator=generator)
        x, targets, _ = random_translate(x, targets, max_shift=x.shape[-1] // 8, generator=generator)
        return x, targets

    # --- losses -----------------------------------------------------------------------------------------------
    def loss(self, outputs, targets) -> dict:
        """The detector's loss terms (per image for yolo_tiny; batch means for torchvision detectors)."""
        return outputs.loss(targets)

    def objective(self, name: str = "loss", weights: dict | None = None, **kwargs):
        """The weighted sum of the named terms (default: every term the model has, weight 1); a term asked for by
        name that the model does not have is an error, never a silent zero."""
        if name not in ("loss", "ce"):
            raise AdvbenchError(f"attack.loss={name} is not defined for detection: the objective is the weighted "
                                "sum of attack.terms (box, obj, cls, dfl: those the detector has)")
        asked = self.check_terms(weights) if weights else None

        def weighted(outputs, targets):
            terms = self.loss(outputs, targets)
            missing = sorted(set(asked or ()) - set(terms))
            if missing:
                raise AdvbenchError(f"attack.terms: this detector has no {', '.join(missing)} loss term; it has "
                                    f"{', '.join(terms)}")
            return sum(w * terms[t] for t, w in (asked or dict.fromkeys(terms, 1.0)).items() if w)
        return weighted

    # --- correct, goals ---------------------------------------------------------------------------------------
    def recalls(self, outputs, targets) -> torch.Tensor:
        """Per image: the share of its objects found with the right class (predictions scoring >= score)."""
        return torch.tensor([recall(p, t, self.score) for p, t in zip(outputs.predictions(), targets)])

    def correct(self, outputs, targets) -> torch.Tensor:
        """Per image: recall at least ``broken_below``."""
        return (self.recalls(outputs, targets) >= self.broken_below).to(self._device(targets))

    @staticmethod
    def _device(targets):
        return targets[0]["boxes"].device if targets else torch.device("cpu")

    def goal(self, kind: str, relabel: str, model, x, targets) -> list:
        """Crafted targets an attack descends towards: none (TOG vanishing/fabrication), or the clean predictions,
        relabeled to their most or least likely other class (TOG mislabeling)."""
        if kind == "empty":
            return [_empty(x.device) for _ in range(len(x))]
        if kind == "truth":
            return targets
        predictions = self.predict(model, x).predictions()
        out = []
        for p in predictions:
            p = confident(p, self.score)
            labels = p["labels"]
            if relabel != "none":
                scores = p.get("class_scores")
                if scores is None:  # a detector that keeps no per-class scores: the next class
                    labels = (labels + 1) % self.n_classes
                else:
                    scores = scores.clone().scatter_(1, labels[:, None], float("nan"))
                    scores = scores.nan_to_num(float("-inf") if relabel == "ml" else float("inf"))
                    labels = scores.argmax(1) if relabel == "ml" else scores.argmin(1)
            out.append({"boxes": p["boxes"].detach(), "labels": labels.detach()})
        return out

    # --- what an attack and a step see -------------------------------------------------------------------------
    def forward_pair(self, model, x, x_adv):
        return model(torch.cat([x, x_adv])).halves()

    def same_outputs(self, a, b) -> bool:
        return all(len(p["scores"]) == len(q["scores"]) and torch.allclose(p["scores"], q["scores"], atol=1e-5)
                   for p, q in zip(a.predictions(), b.predictions()))

    def predict(self, model, x):
        outputs = super().predict(model, x)
        outputs.predictions()  # scored now, in eval mode without grad
        return outputs

    # --- evaluation -------------------------------------------------------------------------------------------
    def new_records(self, attacks: list, n: int, cascade: bool = True) -> Records:
        """What an evaluation keeps per image beyond the flags: predictions, for mAP."""
        return Records(attacks, n, self.score, cascade)

    def summarize(self, flags: dict, records: Records | None = None) -> dict:
        """mAP@0.5 and mAP@0.5:0.95, clean and under attack (per attack cumulative, and of each image's worst case),
        AP@0.5 per class, how the attacks won, and the share of images still found (recall >= broken_below)."""
        names = [name for name in flags if name != "clean"]
        clean = mean_ap(records.clean, records.gt, self.classes)
        out = {"n_examples": len(records.gt), "n_objects": sum(len(t["labels"]) for t in records.gt),
               "clean_map50": clean["map50"], "clean_map": clean["map"]}
        if not names:
            return out | {"robust_map50": None, "robust_map50_by_attack": {}, "ap50_per_class": {
                "clean": clean["ap50_per_class"]}}
        by_attack = {name: mean_ap(records.after[name], records.gt, self.classes) for name in names}
        # mAP does not split over images, so the per-image worst case can score above one attack's own
        # predictions: each is a real attack outcome, and the robust number is the lowest of them. The clean
        # predictions are one too (an attacker may leave every image alone): robust never exceeds clean.
        robust = min([clean, mean_ap(records.worst, records.gt, self.classes), *by_attack.values()],
                     key=lambda m: (m["map50"], m["map"]))
        return out | {
            "robust_map50": robust["map50"], "robust_map": robust["map"],
            "robust_map50_by_attack": {name: m["map50"] for name, m in by_attack.items()},
            "robust_map_by_attack": {name: m["map"] for name, m in by_attack.items()},
            "ap50_per_class": {"clean": clean["ap50_per_class"], "robust": robust["ap50_per_class"]},
            "images_still_found": worst_case(flags).float().mean().item(),
            "rates": rates(records, names),
        }

    def metric_definitions(self) -> dict:
        """What robust_map50 is (no paper defines a minimum over prediction sets) beside the standard per-attack mAP,
        and the thresholds of "still found"."""
        return {
            "clean_map50": "mAP@0.5 (COCO-style, torchmetrics) of the clean predictions over the test images",
            "robust_map50_by_attack": "per attack, mAP@0.5 computed the standard way over all test images from one "
                                      "prediction per image: with eval.cascade=true the worst so far after that "
                                      "attack and those before it (cumulative), with false the attack's own",
            "robust_map50": "the lowest mAP@0.5 (ties: mAP@0.5:0.95) of these prediction sets: the clean one, each "
                            "image's worst case over the attacks (lowest recall, then lowest confidence), and each "
                            "attack's own (robust_map50_by_attack); mAP does not split over images, so the set of "
                            "per-image worst cases can score above one attack's, and robust never exceeds clean",
            "images_still_found": "share of images whose recall (objects matched at IoU >= 0.5 with the right "
                                  "class by a prediction scoring >= det_score) stays >= det_recall after every "
                                  "attack",
            "det_score": self.score, "det_recall": self.broken_below,
        }

    def plot_examples(self, x, x_adv, targets, clean_outputs, adv_outputs, path, notes=None, title: str = "") -> None:
        """adversarial_examples.png: true boxes, clean and adversarial predictions with class names."""
        from advbench.tasks.detection.plots import plot_detections
        plot_detections(x, x_adv, targets, clean_outputs.predictions(), adv_outputs.predictions(), self.classes,
                        self.score, path, title)

    def write_saliency(self, model, test, attack, mode, settings, device, out) -> tuple:
        """job=saliency: the input gradient of each loss term and of their sum, on one colour scale."""
        from advbench.tasks.detection.plots import write_term_saliency
        return write_term_saliency(model, test, attack, self, settings, device, out)
