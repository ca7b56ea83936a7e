"""What a detector's forward returns in advbench: its raw outputs bound to the means of scoring them, so that the
detection task computes any model's loss terms and predictions the same way."""
import torch
from torch.utils._pytree import tree_map

# Predictions for mAP keep low-confidence boxes (as YOLO's val.py does); recall counts the confident ones.
MAP_CONF, NMS_IOU, MAX_DET = 0.001, 0.6, 100


class Detections:
    """Raw head outputs of a model with ``loss(raw, targets)`` and ``predict(raw)`` (yolo_tiny's kind)."""

    def __init__(self, raw, model):
        self.raw, self.model, self._predictions = raw, model, None

    def __len__(self) -> int:
        return len(self.raw[0])

    def loss(self, targets) -> dict:
        """{box, obj, cls}: per-image loss terms."""
        return self.model.loss(self.raw, targets)

    def predictions(self) -> list:
        """Per-image {boxes (xyxy px), scores, labels} after NMS, without gradient (computed once)."""
        if self._predictions is None:
            with torch.no_grad():
                self._predictions = self.model.predict(self.raw, MAP_CONF, NMS_IOU, MAX_DET)
        return self._predictions

    def detach(self) -> "Detections":
        return Detections(tree_map(lambda t: t.detach(), self.raw), self.model)

    def halves(self) -> tuple:
        """The outputs of the first and the second half of the batch (a clean/adversarial pair)."""
        parts = [r.chunk(2) for r in self.raw]
        return Detections([p[0] for p in parts], self.model), Detections([p[1] for p in parts], self.model)


class InputDetections:
    """A detector whose losses need the images and targets in one forward (torchvision's): its "outputs" are the
    inputs themselves, scored on demand. The losses are batch means, not per image."""

    def __init__(self, x, model, train_bn: bool | None = None):
        # whether the losses use batch statistics is decided by the model's mode at forward time, as for any model
        self.x, self.model, self._predictions = x, model, None
        self.train_bn = model.training if train_bn is None else train_bn

    def __len__(self) -> int:
        return len(self.x)

    def loss(self, targets) -> dict:
        """{box, obj, cls} (those the model has): each the batch's mean, in train-mode BN only when training."""
        return self.model.terms(self.x, targets, train_bn=self.train_bn)

    def predictions(self) -> list:
        """Per-image {boxes, scores, labels}, eval behaviour, without gradient (computed once)."""
        if self._predictions is None:
            with torch.no_grad():
                self._predictions = self.model.detect(self.x)
        return self._predictions

    def detach(self) -> "InputDetections":
        return InputDetections(self.x.detach(), self.model, self.train_bn)

    def halves(self) -> tuple:
        first, second = self.x.chunk(2)
        return InputDetections(first, self.model, self.train_bn), InputDetections(second, self.model, self.train_bn)


def head_inputs(model, x) -> list:
    """The feature maps an Ultralytics-style model (YOLOv5, YOLOv8/11: ``model.model`` a list of layers, each with
    ``f`` its inputs and ``i`` its index, ``model.save`` the outputs kept) gives its head, one per head input: the
    layers run here, not by ``model(x)``, whose head also decodes in eval mode, with grids or anchors it caches (a
    forward under inference_mode makes them inference tensors). The raw maps are the same in either mode, and no
    module's mode is changed."""
    outputs = []
    for layer in model.model[:-1]:
        if layer.f != -1:
            x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
        x = layer(x)
        outputs.append(x if layer.i in model.save else None)
    return [x if j == -1 else outputs[j] for j in model.model[-1].f]
