"""Scenes composed from real classification images (pasted at random scales and places on a black canvas), with
their boxes and masks: the built-in detection and segmentation sets are made of them."""
import logging

import numpy as np
import torch
import torch.nn.functional as F

from advbench.data import images

log = logging.getLogger(__name__)

_RETRIES = 20      # position draws per item before the item is left out of its scene
_MAX_IOU = 0.2


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Resize a uint8 batch (n, C, H, W) to (h, w) with antialiased bilinear, back to uint8."""
    if x.shape[-2:] == (h, w):
        return x.clone()
    y = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _fit(h: int, w: int, size: int) -> tuple:
    """Native item shape, shrunk (keeping the aspect ratio) to fit a size x size canvas."""
    r = min(1.0, size / max(h, w))
    return max(1, round(h * r)), max(1, round(w * r))


def _tight(fg: torch.Tensor) -> torch.Tensor:
    """Per patch of a boolean batch (n, h, w): [x1, y1, x2, y2) of its true pixels, or -1s if none."""
    cols, rows = fg.any(1), fg.any(2)
    has = cols.any(1)
    w, h = cols.shape[1], rows.shape[1]
    # argmax of a bool finds the first true; on the flipped tensor, the last.
    x1 = cols.int().argmax(1)
    x2 = w - cols.flip(1).int().argmax(1)
    y1 = rows.int().argmax(1)
    y2 = h - rows.flip(1).int().argmax(1)
    box = torch.stack([x1, y1, x2, y2], 1)
    box[~has] = -1
    return box


def _iou(a, b) -> float:
    """IoU of two xyxy boxes given as Python sequences."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def compose_scenes(images: torch.Tensor, labels: torch.Tensor, n_scenes: int, size: int = 64,
                   objects=(1, 4), scale=(0.6, 1.4), seed: int = 0, fg_threshold: int = 32) -> dict:
    """Compose n_scenes detection scenes from classification items; returns images, targets, masks, sources."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() > 254):
        raise ValueError("labels must be in 0..254 (the mask stores class + 1 in a uint8)")
    lo, hi = int(objects[0]), int(objects[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"objects must be (lo, hi) with 1 <= lo <= hi, got {objects}")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
    n, c, h, w = images.shape
    # Items with nothing above the threshold at their fallback size (native, or shrunk to fit the canvas)
    # would give no box, so they never enter a scene.
    fit = images if max(h, w) <= size else _resize(images, *_fit(h, w, size))
    pool = torch.nonzero(fit.amax((1, 2, 3)) > fg_threshold).flatten()
    if len(pool) == 0:
        raise ValueError(f"no source item has a pixel above fg_threshold={fg_threshold}")

    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(lo, hi + 1, (n_scenes,), generator=g)
    src = pool[torch.randint(0, len(pool), (n_scenes, hi), generator=g)]
    s = torch.rand(n_scenes, hi, generator=g, dtype=torch.float64) * (scale[1] - scale[0]) + scale[0]
    pos = torch.rand(n_scenes, hi, _RETRIES, 2, generator=g, dtype=torch.float64)
    # Keep the aspect ratio; an item larger than the canvas shrinks to fit it.
    s = torch.minimum(s, torch.full_like(s, size / max(h, w)))
    ph = (h * s).round().clamp(min=1).long()
    pw = (w * s).round().clamp(min=1).long()

    # Resize once per distinct output shape: few shapes, so few interpolate calls.
    used = torch.arange(hi) < counts[:, None]
    flat = torch.nonzero(used.flatten()).flatten()
    shape_key = (ph.flatten() * (size + 1) + pw.flatten())[flat]
    patches, tights = {}, {}
    for key in shape_key.unique().tolist():
        idx = flat[shape_key == key]
        kh, kw = divmod(key, size + 1)
        out = _resize(images[src.flatten()[idx]], kh, kw)
        fg = out.amax(1) > fg_threshold
        box = _tight(fg)
        on, bn, fn = out.numpy(), box.numpy(), fg.numpy()
        for j, i in enumerate(idx.tolist()):
            patches[i] = (on[j], fn[j])
            tights[i] = bn[j].tolist()

    canvas = np.zeros((n_scenes, c, size, size), np.uint8)
    masks = np.zeros((n_scenes, size, size), np.uint8)
    targets, sources = [], []
    src_l, lab_l, ph_l, pw_l = src.tolist(), labels.tolist(), ph.tolist(), pw.tolist()
    pos_np = pos.numpy()
    dropped = 0
    for k in range(n_scenes):
        boxes, labs, srcs = [], [], []
        for slot in range(int(counts[k])):
            i = k * hi + slot
            tb = tights[i]
            if tb[0] < 0:  # antialiased shrinking can push a faint item under the threshold
                dropped += 1
                continue
            ih_, iw_ = ph_l[k][slot], pw_l[k][slot]
            for u, v in pos_np[k, slot]:
                x0 = int(u * (size - iw_ + 1))
                y0 = int(v * (size - ih_ + 1))
                box = [x0 + tb[0], y0 + tb[1], x0 + tb[2], y0 + tb[3]]
                if all(_iou(box, b) <= _MAX_IOU for b in boxes):
                    break
            else:
                dropped += 1
                continue
            patch, fg = patches[i]
            view = canvas[k, :, y0:y0 + ih_, x0:x0 + iw_]
            np.maximum(view, patch, out=view)
            masks[k, y0:y0 + ih_, x0:x0 + iw_][fg] = lab_l[src_l[k][slot]] + 1
            boxes.append(box)
            labs.append(lab_l[src_l[k][slot]])
            srcs.append(src_l[k][slot])
        if not boxes:
            # Every drawn item faded out: fall back to the first one at its native size, which has foreground.
            boxes, labs, srcs = _native_item(images, labels, int(src[k, 0]), canvas[k], masks[k],
                                             pos_np[k, 0, 0], size, fg_threshold)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labs, dtype=torch.int64)})
        sources.append(torch.tensor(srcs, dtype=torch.int64))
    if dropped:
        log.debug("compose_scenes: %d drawn items left out (overlap or no foreground after resizing)", dropped)
    return {"images": torch.from_numpy(canvas), "targets": targets, "masks": torch.from_numpy(masks),
            "sources": sources}


def _native_item(images, labels, j, canvas, mask, uv, size, fg_threshold):
    """Paste source item j unscaled (shrunk only to fit the canvas) into an empty scene."""
    ih, iw = _fit(*images.shape[-2:], size)
    patch = _resize(images[j:j + 1], ih, iw)
    fg = patch.amax(1) > fg_threshold  # never empty: the pool holds only items with foreground at this size
    tb = _tight(fg)[0].tolist()
    x0, y0 = int(uv[0] * (size - iw + 1)), int(uv[1] * (size - ih + 1))
    view = canvas[:, y0:y0 + ih, x0:x0 + iw]
    np.maximum(view, patch[0].numpy(), out=view)
    mask[y0:y0 + ih, x0:x0 + iw][fg[0].numpy()] = int(labels[j]) + 1
    return [[x0 + tb[0], y0 + tb[1], x0 + tb[2], y0 + tb[3]]], [int(labels[j])], [j]


def digits_source() -> tuple:
    """scikit-learn's 8x8 digits, upsampled (nearest) to uint8 (N, 1, 16, 16), with int64 labels."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, so tests need no data files
    d = load_digits()
    x = torch.from_numpy(d.images).double().mul(255 / 16).round().clamp(0, 255).to(torch.uint8)
    x = x.repeat_interleave(2, 1).repeat_interleave(2, 2).unsqueeze(1)
    return x.contiguous(), torch.from_numpy(d.target).long()


def composed(cfg, items: str, key: str) -> tuple:
    """(train, test, class names) of scenes composed from ``items`` (digits: scikit-learn's digits with the
    stratified 75/25 split of dataset=digits; fashion_mnist: its own split): ``dataset.n_scenes`` training and
    ``dataset.n_test`` test scenes, each split composed from the matching split of items only (so no test item is
    ever seen in training), fixed by ``dataset.split_seed``; each scene's ``key`` (targets: boxes; masks) is its
    target."""
    if items == "digits":
        x, y = digits_source()
        from sklearn.model_selection import train_test_split  # a second to import: only where digits are split
        train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y.numpy(), random_state=0)
        splits, classes = ((x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])), [str(i) for i in range(10)]
    else:
        source = images.fashion_mnist(cfg)
        splits, classes = (source.train, source.test), source.classes
    made = []
    for (x, y), n, seed in zip(splits, (cfg.n_scenes, cfg.n_test), (cfg.split_seed, cfg.split_seed + 1)):
        scenes = compose_scenes(x, y, n, size=cfg.image_size, objects=tuple(cfg.objects), scale=tuple(cfg.scale),
                                seed=seed)
        made.append((scenes["images"], scenes[key]))
    return made[0], made[1], classes
