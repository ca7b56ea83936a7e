"""Images on disk read safely: decoded with one-line errors, letterboxed into uint8 tensors; UTF-8 text files."""
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from advbench.errors import AdvbenchError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm"}


class DataError(AdvbenchError):
    """A user's data that cannot be read: one line naming the file (and line)."""


def letterbox(image: torch.Tensor, size: int, fill: int = 114) -> tuple:
    """Resize (C, H, W) uint8 so its longer side is size, pad centred with grey; returns (image, scale, (left, top))."""
    c, h, w = image.shape
    r = size / max(h, w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    if (nh, nw) != (h, w):
        x = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        image = x[0].round_().clamp_(0, 255).to(torch.uint8)
    # YOLOv5's split of an odd padding: the extra pixel goes to the bottom/right.
    dw, dh = (size - nw) / 2, (size - nh) / 2
    left, top = round(dw - 0.1), round(dh - 0.1)
    out = torch.full((c, size, size), fill, dtype=torch.uint8)
    out[:, top:top + nh, left:left + nw] = image
    return out, r, (left, top)


def _unreadable(path, err: Exception) -> DataError:
    # Callers catch every Exception around Pillow: it reports a corrupt file as OSError, SyntaxError, ValueError,
    # struct.error, EOFError or DecompressionBombError, by format and by where the damage lies (and ultralytics,
    # once imported, patches Image.open to try a HEIF plugin, adding ImportError). The user needs the file's name.
    return DataError(f"{path}: not a readable image ({err.__class__.__name__}); accepted: "
                     f"{', '.join(sorted(IMAGE_SUFFIXES))}")


def decoded(path: Path, mode: str | None = None) -> Image.Image:
    """``path`` decoded by Pillow (converted to ``mode`` where given); a missing or unreadable file is a DataError
    naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode) if mode else im
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as e:  # Pillow's many ways of saying corrupt: see _unreadable
        raise _unreadable(path, e) from None


def image_size(path: Path) -> tuple:
    """(width, height) of an image file from its header alone (Pillow decodes no pixels: cheap over a whole
    folder); a missing or unreadable file is a DataError naming it."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as e:  # Pillow's many ways of saying corrupt: see _unreadable
        raise _unreadable(path, e) from None


def load_image(path: Path) -> torch.Tensor:
    """Read an image file as uint8 (C, H, W): 1 channel for greyscale, 3 otherwise; EXIF rotation applied."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("L" if im.mode in ("1", "L", "LA") else "RGB")
            t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            return t.view(im.height, im.width, -1).permute(2, 0, 1).contiguous()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as e:  # Pillow's many ways of saying corrupt: see _unreadable
        raise _unreadable(path, e) from None


def stack_images(images: list, source: str) -> torch.Tensor:
    """Stack letterboxed images; a split mixing greyscale and colour is made all colour."""
    if not images:
        raise DataError(f"{source}: the split holds no images; accepted: {', '.join(sorted(IMAGE_SUFFIXES))}")
    if len({x.shape[0] for x in images}) > 1:
        log.info("%s: greyscale and colour images mixed; greyscale ones converted to RGB", source)
        images = [x.expand(3, -1, -1) for x in images]
    return torch.stack(images)


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (a byte-order mark allowed), ``what`` it is naming it in the errors."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); expected a UTF-8 {what}") from None
    except OSError as e:  # a folder, no permission
        raise DataError(f"{path}: {what} cannot be read ({e.strerror or e.__class__.__name__})") from None
