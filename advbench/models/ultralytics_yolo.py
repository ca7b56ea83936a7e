"""Ultralytics' YOLO detectors (YOLOv8, YOLO11, ...: NMS-based Detect heads) as advbench models, built offline.

Optional: ultralytics is imported only when such a model is built (pip install 'advbench[yolo]')."""
import logging
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from advbench.errors import AdvbenchError
from advbench.models.detector import Detections, head_inputs

log = logging.getLogger(__name__)


def _ultralytics():
    """Import ultralytics offline, or say how to install it."""
    # It resolves two DNS names at import (its ONLINE flag) unless told it is offline; a user's explicit value wins.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import numpy as np
    from torch import _tensor_str
    # its import also sets torch's and numpy's print options process-wide: put them back
    numpy_options, torch_options = np.get_printoptions(), dict(vars(_tensor_str.PRINT_OPTS))
    # and it replaces PIL's Image.open and torch.save process-wide (HEIF decoding, retried saves): put them back,
    # so that advbench's image reading and its atomic checkpoints behave as everywhere else
    from PIL import Image
    image_open, torch_save = Image.open, torch.save
    try:
        import ultralytics  # noqa: F401  (writes its settings file, ~/.config/Ultralytics/settings.json, once)
    except ImportError:
        raise AdvbenchError("model=ultralytics_yolo needs the ultralytics package: pip install 'advbench[yolo]'") \
            from None
    finally:
        np.set_printoptions(**numpy_options)
        vars(_tensor_str.PRINT_OPTS).update(torch_options)
        Image.open, torch.save = image_open, torch_save
    from ultralytics.nn.tasks import DetectionModel
    return DetectionModel


def ultralytics_yolo(in_shape, n_classes: int, mean=None, std=None, cfg: str = "yolov8n.yaml",
                     weights: str | None = None, scale: str | None = None, trust_pickle: bool = False):
    """advbench's factory (model=ultralytics_yolo): a DetectionModel built from ``cfg`` (a YAML ultralytics ships,
    or a local one) with random weights, ``n_classes`` classes and in_shape[0] input channels; ``scale`` (n, s, m,
    l, x) overrides the one in cfg's name. ``weights``: a local state dict (loaded with weights_only=True), or an
    ultralytics .pt, which pickles the whole model and so can run code when loaded: that needs ``trust_pickle=True``
    and replaces ``cfg``. Inputs are [0, 1] pixels, as ultralytics expects: ``mean``/``std`` are not used."""
    detection_model = _ultralytics()
    c, h, w = in_shape
    model, state = None, None
    if weights is not None:
        model, state = _load(weights, trust_pickle)
    if model is None:
        if "://" in str(cfg):  # ultralytics would download it
            raise AdvbenchError(f"model.cfg={cfg}: give a YAML name or a local file, not a URL")
        from ultralytics.nn.tasks import yaml_model_load
        try:
            spec = yaml_model_load(cfg)
        except FileNotFoundError:
            raise AdvbenchError(f"model.cfg={cfg}: no such model YAML (e.g. yolov8n.yaml, yolo11n.yaml)") from None
        if scale is not None:
            spec["scale"] = scale
        quiet = logging.getLogger("ultralytics")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # its LOGGER prints the layer table and "Overriding nc" on stdout
        try:
            model = detection_model(spec, ch=c, nc=n_classes, verbose=False)
        finally:
            quiet.setLevel(level)
    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    if model.model[-1].nc != n_classes or channels != c:
        raise AdvbenchError(f"model.weights={weights}: it detects {model.model[-1].nc} classes in "
                            f"{channels}-channel images; the data has {n_classes} in {c}")
    detector = UltralyticsYolo(model)
    stride = int(model.stride.max())
    if h % stride or w % stride:
        raise AdvbenchError(f"model=ultralytics_yolo: {h}x{w} images; {cfg} needs sides divisible by {stride}")
    if state is not None:
        # the wrapper's state dict (advbench's model.pt) or the bare DetectionModel's
        target = detector if all(k.startswith("model.model.") for k in state) else model
        target.load_state_dict(state)
    log.info("ultralytics %s: %d classes, %d input channels, strides %s", model.yaml.get("yaml_file", cfg),
             n_classes, c, model.stride.tolist())
    return detector


def _load(path, trust_pickle: bool):
    """(a trusted pickled DetectionModel, None) or (None, a state dict), from a local file."""
    if not Path(path).is_file():
        raise AdvbenchError(f"model.weights={path}: no such file (weights are never downloaded)")
    if trust_pickle:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for this pickle
        if isinstance(ckpt, dict):
            ckpt = ckpt["ema"] if ckpt.get("ema") is not None else ckpt.get("model")
        if not isinstance(ckpt, nn.Module):
            raise AdvbenchError(f"model.weights={path}: holds no model (an ultralytics .pt has 'model' or 'ema')")
        return ckpt.float(), None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise AdvbenchError(f"model.weights={path}: an ultralytics .pt pickles the whole model and could run code; "
                            "pass model.trust_pickle=true only if you trust the file") from None
    if not isinstance(state, dict):
        raise AdvbenchError(f"model.weights={path}: not a state dict")
    return None, state.get("state_dict", state)


class UltralyticsYolo(nn.Module):
    """An ultralytics DetectionModel whose forward returns advbench's Detections: loss terms box, cls, dfl per
    image (ultralytics' v8DetectionLoss, gains box 7.5, cls 0.5, dfl 1.5) and predictions by its decode and NMS."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from ultralytics.nn.modules.head import Detect
        from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace
        head = model.model[-1]
        if type(head) is not Detect or getattr(head, "one2one_cv2", None) is not None or head.reg_max <= 1:
            raise AdvbenchError(f"model=ultralytics_yolo: {type(head).__name__} heads (end-to-end, DFL-free, or not "
                                "detection: YOLO26, YOLOv10, -seg, -pose...) are not supported; use yolov8/yolo11")
        self.model, self.n_classes = model, head.nc
        # v8DetectionLoss reads its gains from model.args, which only ultralytics' trainer sets (a dict in a .pt)
        args = getattr(model, "args", None) or {}
        model.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **(args if isinstance(args, dict) else vars(args))})
        self._criterion = None

    def forward(self, x) -> Detections:
        """Raw head outputs [boxes (N, 4 reg_max, A), scores (N, nc, A), then one (N, 0, H/s, W/s) per stride]."""
        head, feats = self.model.model[-1], head_inputs(self.model, x)
        raw = head.forward_head(feats, **head.one2many)
        # empty stand-ins for the feature maps: the loss and decode need their shapes only (make_anchors)
        shapes = [f.new_empty(f.shape[0], 0, *f.shape[2:]) for f in feats]
        return Detections([raw["boxes"], raw["scores"], *shapes], self)

    def criterion(self, device):
        """ultralytics' v8DetectionLoss, built (once per device) on first use."""
        if self._criterion is None or self._criterion.device != device:
            from ultralytics.utils.loss import v8DetectionLoss
            self._criterion = v8DetectionLoss(self.model)
        return self._criterion

    def loss(self, raw, targets) -> dict:
        """Per-image dict(box, cls, dfl), each (N,) fp32: ultralytics' loss of a batch of that one image."""
        # Its loss normalizes by the batch's summed target scores, which couples images: run it once per image
        # on slices of the raw maps (the network ran once on the batch; only the assigner and loss repeat).
        from ultralytics.utils.ops import xyxy2xywh
        boxes, scores, *feats = (r.float() for r in raw)
        crit = self.criterion(boxes.device)
        h, w = (s * float(self.model.stride[0]) for s in feats[0].shape[2:])
        rows = []
        for i, t in enumerate(targets):
            b = t["boxes"].to(boxes.device, torch.float32).reshape(-1, 4)
            batch = {"batch_idx": b.new_zeros(len(b)), "cls": t["labels"].to(b).view(-1, 1),
                     "bboxes": xyxy2xywh(b) / b.new_tensor([w, h, w, h])}
            preds = {"boxes": boxes[i:i + 1], "scores": scores[i:i + 1], "feats": [f[i:i + 1] for f in feats]}
            rows.append(crit.get_assigned_targets_and_loss(preds, batch)[1])
        terms = torch.stack(rows) if rows else boxes.new_zeros(0, 3)
        return {"box": terms[:, 0], "cls": terms[:, 1], "dfl": terms[:, 2]}

    def predict(self, raw, conf_threshold: float = 0.001, iou_threshold: float = 0.6, max_det: int = 100) -> list:
        """Per-image dicts (boxes xyxy px clipped, scores, labels, class_scores) by ultralytics' decode and NMS."""
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.tal import make_anchors
        boxes, scores, *feats = (r.float() for r in raw)
        head = self.model.model[-1]
        # the head's own decode (Detect._get_decode_boxes) without its anchor cache
        anchors, strides = (a.transpose(0, 1) for a in make_anchors(feats, head.stride, 0.5))
        decoded = head.decode_bboxes(head.dfl(boxes), anchors.unsqueeze(0)) * strides
        y = torch.cat([decoded, scores.sigmoid()], 1)  # (N, 4 + nc, A): xywh px, class probabilities
        # multi-label as ultralytics' val; no time limit, so results don't depend on the machine's speed
        found, kept = non_max_suppression(y, conf_threshold, iou_threshold, multi_label=True, max_det=max_det,
                                          nc=self.n_classes, max_time_img=float("inf"), return_idxs=True)
        h, w = (s * float(head.stride[0]) for s in feats[0].shape[2:])
        lim = y.new_tensor([w, h, w, h])
        return [{"boxes": torch.minimum(d[:, :4].clamp(min=0), lim), "scores": d[:, 4], "labels": d[:, 5].long(),
                 "class_scores": y[i, 4:, k.long()].T} for i, (d, k) in enumerate(zip(found, kept))]

    @torch.no_grad()
    def detect(self, x) -> list:
        """predict(forward(x)) without gradients, in the model's current mode."""
        return self(x).predictions()
