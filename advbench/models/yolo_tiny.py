"""yolo_tiny: a small YOLOv5-style detector (strides 8 and 16) for 64-96 px canvases, trainable on a CPU in minutes.

Written here (not vendored): a C3/SPPF backbone, an FPN+PAN neck and 1x1 anchor heads; YOLOv5's loss recipe is
in yolo_loss.py, per image so that attacks get per-example losses and a batch-size-independent gradient."""
import math

import torch
import torch.nn as nn
import torchvision

from advbench.models.detector import Detections
from advbench.models.image import Normalize
from advbench.models.yolo_loss import yolo_loss

# Pixels (w, h). Stride 8 takes ~10-28 px objects, stride 16 ~24-45 px; the width/height ratio
# rule (< 4) lets each object train anchors of both scales, as in YOLOv5.
DEFAULT_ANCHORS = (((10, 14), (16, 20), (20, 28)), ((26, 34), (36, 30), (36, 46)))
STRIDES = (8, 16)


class Conv(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + SiLU, 'same' padding."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__(nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv, with an optional residual."""

    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 1), Conv(c, c, 3), shortcut

    def forward(self, x):
        """Bottleneck output, plus x if residual."""
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """YOLOv5's CSP block: half the channels go through a bottleneck, half bypass it."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True):
        super().__init__()
        c_ = c2 // 2
        self.cv1, self.cv2, self.cv3 = Conv(c1, c_), Conv(c1, c_), Conv(2 * c_, c2)
        self.m = Bottleneck(c_, shortcut)

    def forward(self, x):
        """Merged bottleneck and bypass branches."""
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class SPPF(nn.Module):
    """Chained 5x5 max-pools: widens the stride-16 receptive field to the whole 64-96 px canvas."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c // 2), Conv(2 * c, c)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        """Concatenated 1x, 2x, 3x pooled features, fused."""
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class YoloTiny(nn.Module):
    """Single-stage detector: C3 backbone to stride 16, FPN+PAN neck, 1x1 anchor heads at strides 8 and 16."""
    saliency_layer = "td8"  # Grad-CAM's default: the stride-8 neck, which feeds both heads (every loss term)

    def __init__(self, in_shape, n_classes, mean, std, width: int = 16, anchors=DEFAULT_ANCHORS):
        super().__init__()
        c, h, w = in_shape
        self.n_classes, self.strides = n_classes, STRIDES
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))  # (2, A, 2) px
        na, no, w1 = self.anchors.shape[1], 5 + n_classes, width
        self.norm = Normalize(mean, std)
        self.stem = Conv(c, w1, 3, 2)
        self.s4 = nn.Sequential(Conv(w1, 2 * w1, 3, 2), C3(2 * w1, 2 * w1))
        self.s8 = nn.Sequential(Conv(2 * w1, 4 * w1, 3, 2), C3(4 * w1, 4 * w1))
        self.s16 = nn.Sequential(Conv(4 * w1, 8 * w1, 3, 2), C3(8 * w1, 8 * w1), SPPF(8 * w1))
        self.lat16 = Conv(8 * w1, 4 * w1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td8 = C3(8 * w1, 4 * w1, shortcut=False)
        self.down8 = Conv(4 * w1, 4 * w1, 3, 2)
        self.bu16 = C3(8 * w1, 8 * w1, shortcut=False)
        self.heads = nn.ModuleList([nn.Conv2d(4 * w1, na * no, 1), nn.Conv2d(8 * w1, na * no, 1)])
        # YOLOv5 gains, scaled as its train.py does for 2 output layers, image size and class count.
        nl = len(STRIDES)
        self.hyp = dict(box=0.05 * 3 / nl, obj=1.0 * (max(h, w) / 640) ** 2 * 3 / nl,
                        cls=0.5 * n_classes / 80 * 3 / nl, anchor_t=4.0)
        self.balance = (4.0, 1.0)  # YOLOv5's weights for its P3 and P4 objectness
        self._init_head_biases(h, w)

    def _init_head_biases(self, h: int, w: int):
        # Start near the data's prior (~2 objects per image, uniform classes) so early obj/cls losses
        # don't swamp the box term, as YOLOv5 does.
        no = 5 + self.n_classes
        for head, s in zip(self.heads, self.strides):
            b = head.bias.view(-1, no)
            with torch.no_grad():
                b[:, 4] += math.log(2 / ((h / s) * (w / s)))
                b[:, 5:] += math.log(0.6 / (self.n_classes - 0.99))

    def forward(self, x) -> Detections:
        """Raw head outputs (a list over strides 8 and 16 of (N, A, H/s, W/s, 5 + n_classes)), bound to this
        model's loss and prediction."""
        return Detections(self.heads_out(x), self)

    def heads_out(self, x) -> list:
        """The raw head outputs alone."""
        p8 = self.s8(self.s4(self.stem(self.norm(x))))
        l16 = self.lat16(self.s16(p8))
        o8 = self.td8(torch.cat([self.up(l16), p8], 1))
        o16 = self.bu16(torch.cat([self.down8(o8), l16], 1))
        out = []
        for head, f in zip(self.heads, (o8, o16)):
            y = head(f)
            n, _, hs, ws = y.shape
            out.append(y.view(n, self.anchors.shape[1], 5 + self.n_classes, hs, ws).permute(0, 1, 3, 4, 2))
        return out

    def loss(self, raw, targets):
        """Per-image YOLOv5 loss terms dict(box, obj, cls), each (N,) fp32; their sum is the training loss."""
        return yolo_loss(raw, targets, self.anchors, self.strides, self.n_classes, self.hyp, self.balance)

    def decode(self, raw):
        """Boxes (N, M, 4) xyxy pixels, unclipped, and per-class scores (N, M, n_classes) = obj * cls prob."""
        boxes, scores = [], []
        for p, anc, s in zip(raw, self.anchors, self.strides):
            p = p.float().sigmoid()
            n, na, hs, ws, no = p.shape
            gy, gx = torch.meshgrid(torch.arange(hs, device=p.device), torch.arange(ws, device=p.device),
                                    indexing="ij")
            grid = torch.stack([gx, gy], -1).view(1, 1, hs, ws, 2).float()
            xy = (p[..., :2] * 2 - 0.5 + grid) * s
            wh = (p[..., 2:4] * 2) ** 2 * anc.view(1, na, 1, 1, 2)
            boxes.append(torch.cat([xy - wh / 2, xy + wh / 2], -1).reshape(n, -1, 4))
            scores.append((p[..., 4:5] * p[..., 5:]).reshape(n, -1, no - 5))
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    def predict(self, raw, conf_threshold: float = 0.001, iou_threshold: float = 0.6, max_det: int = 100):
        """Decode raw outputs to per-image dicts (boxes xyxy px clipped, scores, labels) after class-aware NMS."""
        boxes, scores = self.decode(raw)
        h, w = raw[0].shape[2] * self.strides[0], raw[0].shape[3] * self.strides[0]
        lim = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), lim)
        out = []
        for bx, sc in zip(boxes, scores):
            # Multi-label, as YOLOv5 does for mAP: one candidate per (box, class) above threshold.
            i, c = (sc > conf_threshold).nonzero(as_tuple=True)
            b, s = bx[i], sc[i, c]
            if s.numel() > 30 * max_det:  # bounds NMS cost when the model is still uncalibrated
                s, top = s.topk(30 * max_det)
                b, c, i = b[top], c[top], i[top]
            keep = torchvision.ops.batched_nms(b, s, c, iou_threshold)[:max_det]
            # every class's score of a kept box: what TOG's most/least-likely mislabeling picks from
            out.append(dict(boxes=b[keep], scores=s[keep], labels=c[keep].long(), class_scores=sc[i[keep]]))
        return out

    @torch.no_grad()
    def detect(self, x, conf_threshold: float = 0.001, iou_threshold: float = 0.6, max_det: int = 100):
        """predict(forward(x)) without gradients."""
        return self.predict(self.heads_out(x), conf_threshold, iou_threshold, max_det)
