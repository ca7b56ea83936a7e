"""Box-aware batch augmentation for detection and segmentation: flips and translations that move targets along."""
import torch


def _check(images: torch.Tensor, targets: list, masks) -> None:
    """Raise ValueError if targets or masks do not match the image batch."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    if len(targets) != len(images):
        raise ValueError(f"{len(targets)} targets for {len(images)} images")
    if masks is not None and masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"masks must be (N, H, W) = {(images.shape[0], *images.shape[2:])}, "
                         f"got {tuple(masks.shape)}")


def random_flip(images: torch.Tensor, targets: list, masks=None, *, generator: torch.Generator,
                p: float = 0.5) -> tuple:
    """Flip each image horizontally with probability p, with its boxes and mask; returns (images, targets, masks)."""
    _check(images, targets, masks)
    w = images.shape[-1]
    flip = torch.rand(len(images), generator=generator) < p
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if masks is not None:
        masks = torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks)
    out = []
    for t, f in zip(targets, flip.tolist()):
        t = dict(t)
        if f:
            b = t["boxes"]
            # Boxes span pixel edges, so column c -> w - 1 - c moves the edge x to w - x.
            t["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
        out.append(t)
    return images, out, masks


def _shift(x: torch.Tensor, dx: int, dy: int, fill) -> torch.Tensor:
    """Shift the last two dims of x by (dx, dy) pixels, filling the uncovered part with fill."""
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    if abs(dx) < w and abs(dy) < h:
        out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def random_translate(images: torch.Tensor, targets: list, masks=None, *, max_shift: int,
                     generator: torch.Generator) -> tuple:
    """Shift each image by a random integer offset in [-max_shift, max_shift] with zero fill; boxes follow."""
    _check(images, targets, masks)
    n, _, h, w = images.shape
    d = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).tolist()
    images = torch.stack([_shift(x, dx, dy, 0) for x, (dx, dy) in zip(images, d)]) if n else images.clone()
    if masks is not None:
        masks = torch.stack([_shift(m, dx, dy, 0) for m, (dx, dy) in zip(masks, d)]) if n else masks.clone()
    out = []
    for t, (dx, dy) in zip(targets, d):
        b = t["boxes"] + torch.tensor([dx, dy, dx, dy], dtype=t["boxes"].dtype)
        b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], 1)
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # a box that left the image has collapsed to an edge
        k = len(b)
        # Per-box entries (labels, and any other tensor with one row per box) lose the dropped rows too.
        t = {key: (v[keep] if torch.is_tensor(v) and v.dim() > 0 and len(v) == k else v) for key, v in t.items()}
        t["boxes"] = b[keep]
        out.append(t)
    return images, out, masks
