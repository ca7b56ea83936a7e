"""The original YOLOv5 (anchors; box, objectness and class terms) as an advbench model: built offline from a model
YAML, or loaded from a YOLOv5 .pt without running code from the file (yolov5_load.py).

Optional: the yolov5 package (GPL-3.0, never vendored) is imported only when such a model is built
(pip install 'advbench[yolov5]')."""
import logging

import torch
import torchvision
from torch import nn

from advbench.errors import AdvbenchError
from advbench.models.detector import Detections, head_inputs
from advbench.models.yolo_loss import yolo_loss
from advbench.models.yolov5_load import cfg_path, import_yolov5, load_weights

log = logging.getLogger(__name__)
# train.py's hyp.scratch-low.yaml: the loss settings of a model whose checkpoint carries none
HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0,
       "label_smoothing": 0.0}
MAX_NMS = 30000  # val.py's non_max_suppression: the most candidates an image sends to NMS


def yolov5(in_shape, n_classes: int, mean=None, std=None, cfg: str = "yolov5n.yaml", weights: str | None = None):
    """advbench's factory (model=yolov5): a YOLOv5 DetectionModel built from ``cfg`` (a YAML yolov5 ships, e.g.
    yolov5n.yaml or yolov5s6.yaml, or a local file) with random weights, ``n_classes`` classes and in_shape[0]
    input channels; or ``weights``: a YOLOv5 .pt (its EMA model, else its model; replaces cfg), loaded with
    weights_only=True and only torch's and yolov5's classes allowed, or a state dict for cfg's model. Inputs are
    [0, 1] pixels, as YOLOv5 expects: ``mean``/``std`` are not used."""
    yolo = import_yolov5()
    c, h, w = in_shape
    model, state = load_weights(weights, yolo) if weights is not None else (None, None)
    if model is None:
        quiet = logging.getLogger("yolov5")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # its LOGGER prints the layer table and "Overriding model.yaml nc"
        try:
            model = yolo.DetectionModel(str(cfg_path(cfg, yolo)), ch=c, nc=n_classes)
        finally:
            quiet.setLevel(level)
    head = model.model[-1]
    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    if type(head) is not yolo.Detect:
        raise AdvbenchError(f"model=yolov5: a {type(head).__name__} head is not supported (detection models only: "
                            "yolov5n.yaml ... yolov5x6.yaml, not -seg or -cls)")
    if head.nc != n_classes or channels != c:
        raise AdvbenchError(f"model.weights={weights}: it detects {head.nc} classes in {channels}-channel images; "
                            f"the data has {n_classes} in {c}")
    stride = int(head.stride.max())
    if h % stride or w % stride:
        raise AdvbenchError(f"model=yolov5: {h}x{w} images; this model needs sides divisible by {stride}")
    if not isinstance(getattr(model, "hyp", None), dict):
        model.hyp = default_hyp(head.nl, n_classes, max(h, w))  # what train.py attaches (ComputeLoss reads it)
    detector = YoloV5(model)
    if state is not None:
        # the wrapper's state dict (advbench's model.pt) or the bare DetectionModel's
        target = detector if all(k.startswith("model.model.") for k in state) else model
        target.load_state_dict(state)
    log.info("yolov5 %s: %d classes, %d input channels, strides %s", getattr(model, "yaml_file", cfg), n_classes,
             c, head.stride.tolist())
    return detector


def default_hyp(layers: int, n_classes: int, img_size: int) -> dict:
    """train.py's loss settings: hyp.scratch-low's gains scaled to the layers, classes and image size."""
    return HYP | {"box": HYP["box"] * 3 / layers, "cls": HYP["cls"] * n_classes / 80 * 3 / layers,
                  "obj": HYP["obj"] * (img_size / 640) ** 2 * 3 / layers}


class YoloV5(nn.Module):
    """A YOLOv5 DetectionModel (shared, not copied) whose forward returns advbench's Detections: loss terms box,
    obj, cls per image (ComputeLoss's formulas and the model's hyp) and predictions by val.py's decode and NMS.

    Wrap your own model (an EMA copy in your val.py, say) with ``YoloV5(model)``; ``img_size`` sets the objectness
    gain when the model carries no ``hyp`` (train.py's scaling)."""

    def __init__(self, model: nn.Module, img_size: int = 640):
        super().__init__()
        head = model.model[-1]
        self.model, self.n_classes = model, head.nc
        hyp = getattr(model, "hyp", None)
        self.hyp = dict(hyp) if isinstance(hyp, dict) else default_hyp(head.nl, head.nc, img_size)
        if head.nc == 1:
            self.hyp["cls"] = 0.0  # ComputeLoss has no class term for one class (objectness says it all)
        self.balance = {3: [4.0, 1.0, 0.4]}.get(head.nl, [4.0, 1.0, 0.25, 0.06, 0.02])  # ComputeLoss's

    @property
    def strides(self) -> list:
        return self.model.model[-1].stride.tolist()

    def anchors(self) -> torch.Tensor:
        """(layers, A, 2) anchors in pixels (the head keeps them in grid units)."""
        head = self.model.model[-1]
        return head.anchors * head.stride.to(head.anchors).view(-1, 1, 1)

    def forward(self, x) -> Detections:
        """Raw head outputs, a list over strides of (N, A, H/s, W/s, 5 + n_classes) logits."""
        head, raw = self.model.model[-1], []
        for conv, features in zip(head.m, head_inputs(self.model, x)):
            p = conv(features)
            n, _, hs, ws = p.shape
            raw.append(p.view(n, head.na, head.no, hs, ws).permute(0, 1, 3, 4, 2))
        return Detections(raw, self)

    def loss(self, raw, targets) -> dict:
        """Per-image dict(box, obj, cls), each (N,) fp32: ComputeLoss's terms for a batch of that one image."""
        return yolo_loss(raw, targets, self.anchors(), self.strides, self.n_classes, self.hyp, self.balance)

    def predict(self, raw, conf_threshold: float = 0.001, iou_threshold: float = 0.6, max_det: int = 100) -> list:
        """Per-image dicts (boxes xyxy px clipped, scores, labels, class_scores) by YOLOv5's decode and multi-label
        NMS (val.py's), without its time limit, so that results don't depend on the machine's speed."""
        boxes, scores = [], []
        for p, anchors, s in zip(raw, self.anchors(), self.strides):
            p = p.float().sigmoid()
            n, na, hs, ws, _ = p.shape
            gy, gx = torch.meshgrid(torch.arange(hs, device=p.device), torch.arange(ws, device=p.device),
                                    indexing="ij")
            grid = torch.stack([gx, gy], -1).view(1, 1, hs, ws, 2).float() - 0.5
            xy = (p[..., :2] * 2 + grid) * s
            wh = (p[..., 2:4] * 2) ** 2 * anchors.view(1, na, 1, 1, 2)
            boxes.append(torch.cat([xy - wh / 2, xy + wh / 2], -1).reshape(n, -1, 4))
            scores.append((p[..., 4:5] * p[..., 5:]).reshape(n, -1, self.n_classes))  # obj * class probability
        boxes, scores = torch.cat(boxes, 1), torch.cat(scores, 1)
        h, w = (d * self.strides[0] for d in raw[0].shape[2:4])
        lim = boxes.new_tensor([w, h, w, h])
        out = []
        for bx, sc in zip(boxes, scores):
            i, c = (sc > conf_threshold).nonzero(as_tuple=True)  # one candidate per (box, class), as val.py
            s = sc[i, c]
            if len(s) > MAX_NMS:
                s, top = s.topk(MAX_NMS)
                i, c = i[top], c[top]
            keep = torchvision.ops.batched_nms(bx[i], s, c, iou_threshold)[:max_det]
            # every class's score of a kept box: what TOG's most/least-likely mislabeling picks from
            out.append({"boxes": torch.minimum(bx[i[keep]].clamp(min=0), lim), "scores": s[keep],
                        "labels": c[keep].long(), "class_scores": sc[i[keep]]})
        return out

    @torch.no_grad()
    def detect(self, x) -> list:
        """predict(forward(x)) without gradients, in the model's current mode."""
        return self(x).predictions()
