"""YOLOv5's loss recipe (target assignment, CIoU, balanced BCE terms: its ComputeLoss), kept per image for
attacks: an image's terms are ComputeLoss's for a batch of that image alone."""
import math

import torch
import torch.nn.functional as F

# Neighbour-cell offsets in grid units: the centre cell, then left, up, right, down (YOLOv5's order).
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5


def bbox_ciou(b1: torch.Tensor, b2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of paired (cx, cy, w, h) boxes, shapes (n, 4) -> (n,)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = b1.unbind(-1), b2.unbind(-1)
    l1, r1, t1, d1 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    l2, r2, t2, d2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.minimum(r1, r2) - torch.maximum(l1, l2)).clamp(min=0) * \
            (torch.minimum(d1, d2) - torch.maximum(t1, t2)).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(r1, r2) - torch.minimum(l1, l2)
    ch = torch.maximum(d1, d2) - torch.minimum(t1, t2)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    # The CIoU paper treats alpha as a constant in the gradient.
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def targets_to_tensor(targets, device) -> torch.Tensor:
    """Stack a batch's target dicts into one (nt, 6) tensor of (image, class, cx, cy, w, h) in pixels."""
    rows = []
    for i, t in enumerate(targets):
        b = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        lab = torch.as_tensor(t["labels"], device=device).reshape(-1).float()
        cxcywh = torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1)
        rows.append(torch.cat([torch.full_like(lab[:, None], i), lab[:, None], cxcywh], 1))
    return torch.cat(rows, 0) if rows else torch.zeros(0, 6, device=device)


def build_targets(t: torch.Tensor, anchors: torch.Tensor, stride: float, hs: int, ws: int, anchor_t: float):
    """Assign ground truths (t from targets_to_tensor) to (image, anchor, row, col) of one scale, YOLOv5 style."""
    # anchors: (A, 2) px. Returns b, a, gj, gi, tcls (long, (n,)) and tbox ((n, 4) cx, cy relative to the
    # assigned cell, w, h; all in grid units).
    na, dev = anchors.shape[0], t.device
    anc = anchors / stride
    gt = torch.cat([t[:, :2], t[:, 2:] / stride], 1)
    ai = torch.arange(na, device=dev, dtype=torch.float32).view(na, 1).expand(na, gt.shape[0])
    gt = torch.cat([gt.unsqueeze(0).expand(na, -1, -1), ai[..., None]], 2)  # (A, nt, 7)
    # Shape match on width/height ratio rather than IoU: lets one GT train several anchors.
    r = gt[..., 4:6] / anc[:, None]
    gt = gt[torch.max(r, 1 / r).max(2).values < anchor_t]
    gxy = gt[:, 2:4]
    gxi = torch.tensor([ws, hs], device=dev, dtype=torch.float32) - gxy
    # A centre in the left (top) half of its cell also trains the left (upper) neighbour, since the
    # decoded offset sigmoid*2-0.5 spans (-0.5, 1.5) and can reach it: triples the positives.
    j, k = ((gxy % 1 < 0.5) & (gxy > 1)).T
    lft, m = ((gxi % 1 < 0.5) & (gxi > 1)).T
    mask = torch.stack((torch.ones_like(j), j, k, lft, m))
    gt = gt.unsqueeze(0).expand(5, -1, -1)[mask]
    offsets = (torch.zeros_like(gxy)[None] + _OFFSETS.to(dev)[:, None])[mask]
    gxy, gwh = gt[:, 2:4], gt[:, 4:6]
    gij = (gxy - offsets).long()
    gi, gj = gij[:, 0].clamp(0, ws - 1), gij[:, 1].clamp(0, hs - 1)
    tbox = torch.cat([gxy - torch.stack([gi, gj], 1).float(), gwh], 1)
    return gt[:, 0].long(), gt[:, 6].long(), gj, gi, tbox, gt[:, 1].long()


def _bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float, gamma: float) -> torch.Tensor:
    """Element-wise BCE with YOLOv5's positive weight (``*_pw``), focal (its FocalLoss) when ``gamma`` > 0."""
    weight = None if pos_weight == 1 else logits.new_tensor([pos_weight])
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")
    if gamma > 0:
        p = logits.sigmoid()
        p_t = target * p + (1 - target) * (1 - p)
        loss = loss * (target * 0.25 + (1 - target) * 0.75) * (1 - p_t) ** gamma
    return loss


def yolo_loss(raw, targets, anchors, strides, n_classes: int, hyp: dict, balance):
    """Per-image YOLOv5 loss terms: dict(box=(N,), obj=(N,), cls=(N,)), already multiplied by the gains.

    ``anchors``: per scale (A, 2) px; ``hyp``: the gains box, obj, cls and anchor_t, and optionally YOLOv5's
    cls_pw, obj_pw (BCE positive weights), fl_gamma (focal loss) and label_smoothing."""
    n, dev = raw[0].shape[0], raw[0].device
    cls_pw, obj_pw, gamma = hyp.get("cls_pw", 1.0), hyp.get("obj_pw", 1.0), hyp.get("fl_gamma", 0.0)
    smooth = hyp.get("label_smoothing", 0.0)
    cp, cn = 1.0 - 0.5 * smooth, 0.5 * smooth  # YOLOv5's smooth_BCE targets
    t = targets_to_tensor(targets, dev)
    lbox, lobj, lcls = (torch.zeros(n, device=dev) for _ in range(3))
    for i, p in enumerate(raw):
        p = p.float()
        _, na, hs, ws, _ = p.shape
        # 0 * sum keeps every term attached to the graph even when an image has no positives here.
        zero = p.flatten(1).sum(1) * 0
        lbox, lcls = lbox + zero, lcls + zero
        b, a, gj, gi, tbox, tcls = build_targets(t, anchors[i], strides[i], hs, ws, hyp["anchor_t"])
        tobj = torch.zeros(n * na * hs * ws, device=dev)
        if b.numel():
            ps = p[b, a, gj, gi]
            pxy = ps[:, :2].sigmoid() * 2 - 0.5
            pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * (anchors[i][a] / strides[i])
            iou = bbox_ciou(torch.cat([pxy, pwh], 1), tbox)
            # Means over each image's own positives, so no image's loss depends on its batch-mates.
            cnt = torch.bincount(b, minlength=n).clamp(min=1).float()
            lbox = lbox + torch.zeros(n, device=dev).index_add(0, b, 1 - iou) / cnt
            # amax makes the target deterministic when two GTs claim the same prediction.
            flat = ((b * na + a) * hs + gj) * ws + gi
            tobj = tobj.scatter_reduce(0, flat, iou.detach().clamp(min=0), "amax")
            onehot = F.one_hot(tcls, n_classes).float() * (cp - cn) + cn
            bce = _bce(ps[:, 5:], onehot, cls_pw, gamma).mean(1)
            lcls = lcls + torch.zeros(n, device=dev).index_add(0, b, bce) / cnt
        obj = _bce(p[..., 4], tobj.view(n, na, hs, ws), obj_pw, gamma)
        lobj = lobj + obj.flatten(1).mean(1) * balance[i]
    return dict(box=lbox * hyp["box"], obj=lobj * hyp["obj"], cls=lcls * hyp["cls"])
