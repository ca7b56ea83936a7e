"""Detection data on disk (YOLO and COCO layouts) read into letterboxed uint8 tensors and xyxy targets."""
import json
import logging
import math
import os
from pathlib import Path

import torch
import yaml

from advbench.data.formats import IMAGE_SUFFIXES, DataError, letterbox, load_image, read_text, stack_images

log = logging.getLogger(__name__)
_TOL = 1e-3  # normalized coordinates a hair outside [0, 1] come from rounding in the tool that wrote them


def _to_letterbox(boxes: torch.Tensor, scale: float, pad: tuple) -> torch.Tensor:
    """Map pixel xyxy boxes of the original image into the letterboxed one."""
    return boxes * scale + torch.tensor([pad[0], pad[1], pad[0], pad[1]], dtype=torch.float32)


def _class_id(key):
    """A 'names' dict key as a class id (an int, or a string of one), else None."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    try:
        return int(key) if isinstance(key, str) else None
    except ValueError:
        return None


def _names(data: dict, yaml_path: Path) -> list:
    """Class names from a YOLO data YAML: a list, or a {id: name} dict with ids 0..n-1."""
    names = data.get("names")
    if isinstance(names, dict) and names:
        by_id = {_class_id(k): v for k, v in names.items()}
        if set(by_id) != set(range(len(names))):  # a key not an id (None) or one id twice ("0" and 0) fails too
            raise DataError(f"{yaml_path}: 'names' dict keys must be the ids 0..{len(names) - 1}")
        return [str(by_id[i]) for i in range(len(names))]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DataError(f"{yaml_path}: 'names' must be a non-empty list of class names or a {{id: name}} dict")


def _split_files(entry, root: Path, yaml_path: Path, split: str) -> list:
    """Image files of a split entry: a folder (searched recursively), a .txt list of paths, or a list of those."""
    files = []
    for item in entry if isinstance(entry, list) else [entry]:
        p = Path(str(item))
        p = p if p.is_absolute() else root / p
        try:
            folder, listing = p.is_dir(), p.suffix == ".txt" and p.is_file()
        except OSError:  # a name too long for the file system
            folder = listing = False
        if folder:
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif listing:
            for line in read_text(p, "list of image paths").splitlines():
                line = line.strip()
                if line:
                    f = Path(line)
                    files.append(f if f.is_absolute() else p.parent / f)  # Ultralytics: relative to the list
        else:
            raise DataError(f"{yaml_path}: {split}: {str(p)[:200]} is not an image folder or a .txt list of image "
                            "paths")
    if not files:
        raise DataError(f"{yaml_path}: {split}: no image files found; accepted: {', '.join(sorted(IMAGE_SUFFIXES))}")
    return files


def yolo_label_path(image: Path) -> Path:
    """The label file of an image: last '/images/' component replaced by '/labels/', extension by '.txt'."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    s = sb.join(str(image).rsplit(sa, 1))
    return Path(s.rsplit(".", 1)[0] + ".txt")


def _read_yolo_labels(path: Path, n_classes: int) -> tuple:
    """Normalized (k, 4) xyxy boxes and (k,) labels of a YOLO label file; a missing file means no objects."""
    if not path.is_file():
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    boxes, labels = [], []
    accepted = "accepted: 'class cx cy w h' normalized to [0, 1], or 'class x1 y1 x2 y2 ...' polygon"
    for no, line in enumerate(read_text(path, "label file").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            nums = [float(v) for v in parts]
        except ValueError:
            raise DataError(f"{path}:{no}: non-numeric value in {line.strip()[:80]!r}; {accepted}") from None
        if len(nums) != 5 and (len(nums) < 7 or len(nums) % 2 == 0):
            raise DataError(f"{path}:{no}: {len(nums)} numbers; {accepted}")
        cls = nums[0]
        if not cls.is_integer() or not 0 <= cls < n_classes:
            raise DataError(f"{path}:{no}: class {parts[0][:20]} is not an id in 0..{n_classes - 1} (from 'names')")
        xy = nums[1:]
        if any(not -_TOL <= v <= 1 + _TOL for v in xy):
            raise DataError(f"{path}:{no}: coordinate outside [0, 1] in {line.strip()[:80]!r}; {accepted}")
        if len(nums) == 5:
            cx, cy, w, h = xy
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        else:  # segment line: its polygon's bounding box, as Ultralytics does
            box = [min(xy[0::2]), min(xy[1::2]), max(xy[0::2]), max(xy[1::2])]
        boxes.append([min(max(v, 0.0), 1.0) for v in box])
        labels.append(int(cls))
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64)


def _keep_nondegenerate(boxes: torch.Tensor, labels: torch.Tensor, source) -> dict:
    """Target dict without boxes of zero width or height."""
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not keep.all():
        log.warning("%s: %d box(es) of zero width or height skipped", source, int((~keep).sum()))
    return {"boxes": boxes[keep], "labels": labels[keep]}


def read_yolo(data_yaml, split: str, size: int) -> dict:
    """Read one split of an Ultralytics/YOLOv5 data set into dict(images, targets, names, files)."""
    yaml_path = Path(data_yaml)
    try:
        data = yaml.safe_load(read_text(yaml_path, "data YAML"))
    except yaml.YAMLError as e:
        raise DataError(f"{yaml_path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    except RecursionError:
        raise DataError(f"{yaml_path}: not valid YAML (nested too deeply)") from None
    if not isinstance(data, dict):
        raise DataError(f"{yaml_path}: expected a mapping with 'train:', 'val:', 'names:' (Ultralytics data YAML)")
    names = _names(data, yaml_path)
    if not data.get(split):
        raise DataError(f"{yaml_path}: no '{split}:' entry; accepted splits: train, val, test")
    root = Path(str(data.get("path") or "."))
    root = root if root.is_absolute() else yaml_path.parent / root  # relative to the YAML, not the cwd
    files = _split_files(data[split], root, yaml_path, split)
    images, targets = [], []
    for f in files:
        img = load_image(f)
        h, w = img.shape[-2:]
        boxes, labels = _read_yolo_labels(yolo_label_path(f), len(names))
        boxed, scale, pad = letterbox(img, size)
        px = boxes * torch.tensor([w, h, w, h], dtype=torch.float32)
        images.append(boxed)
        targets.append(_keep_nondegenerate(_to_letterbox(px, scale, pad), labels, f))
    return {"images": stack_images(images, f"{yaml_path} ({split})"), "targets": targets,
            "names": names, "files": [str(f) for f in files]}


def _coco_json(path: Path) -> dict:
    """Load and shape-check a COCO instances JSON."""
    try:
        data = json.loads(read_text(path, "annotation file"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")) \
            or not isinstance(data.get("annotations") or [], list):
        raise DataError(f"{path}: expected a COCO instances JSON with 'images', 'annotations', 'categories' lists")
    return data


def _pixels(value, what: str, path: Path):
    """An image entry's width or height: absent (None), or a positive number of pixels."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
                         and math.isfinite(value)):
        return value
    raise DataError(f"{path}: image {what} {str(value)[:40]!r} is not a positive number of pixels")


def read_coco(annotations, image_dir, size: int) -> dict:
    """Read a COCO instances JSON and its images into dict(images, targets, names, files)."""
    path, image_dir = Path(annotations), Path(image_dir)
    data = _coco_json(path)
    try:
        cats = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
        label_of = {cid: i for i, (cid, _) in enumerate(cats)}
        entries = [(int(im["id"]), str(im["file_name"]), _pixels(im.get("width"), "width", path),
                    _pixels(im.get("height"), "height", path)) for im in data["images"]]
    except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: int(Infinity)
        raise DataError(f"{path}: malformed category or image entry ({e.__class__.__name__}: {str(e)[:80]}); each "
                        "needs 'id' and 'name' / 'file_name'") from None
    if not cats or len(label_of) != len(cats):
        raise DataError(f"{path}: 'categories' must be a non-empty list of {{id, name}} with distinct ids")
    per_image = {i: [] for i, *_ in entries}
    if len(per_image) != len(entries):
        raise DataError(f"{path}: duplicate image ids in 'images'")
    skipped = 0
    for n, a in enumerate(data.get("annotations") or []):
        where = f"{path}: annotation {str(a.get('id', n))[:40] if isinstance(a, dict) else n}"
        try:
            img_id, cat = int(a["image_id"]), int(a["category_id"])
            bbox = [float(v) for v in a["bbox"]] if isinstance(a["bbox"], list) else None
        except (KeyError, TypeError, ValueError, OverflowError):
            raise DataError(f"{where}: needs image_id, category_id and bbox [x, y, w, h] in pixels") from None
        if bbox is None or len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
            raise DataError(f"{where}: bbox {str(a['bbox'])[:80]} is not 4 finite numbers; accepted: [x, y, w, h] in "
                            "pixels")
        if img_id not in per_image:
            raise DataError(f"{where}: image_id {img_id} is not in 'images'")
        if cat not in label_of:
            raise DataError(f"{where}: category_id {cat} is not in 'categories' (ids {str([c for c, _ in cats])[:80]})")
        if a.get("iscrowd", 0) or bbox[2] <= 0 or bbox[3] <= 0:
            skipped += 1
            continue
        x, y, w, h = bbox
        per_image[img_id].append(([x, y, x + w, y + h], label_of[cat]))
    if skipped:
        log.info("%s: %d crowd or empty annotation(s) skipped", path, skipped)

    images, targets, files = [], [], []
    for img_id, name, jw, jh in entries:
        f = image_dir / name
        img = load_image(f)
        h, w = img.shape[-2:]
        anns = per_image[img_id]
        boxes = torch.tensor([b for b, _ in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([lab for _, lab in anns], dtype=torch.int64)
        if jw and jh and (int(jw), int(jh)) != (w, h):
            # Boxes are in the annotated size; follow the file if it was resized since.
            log.warning("%s: JSON says %sx%s, file is %dx%d; boxes rescaled", f, jw, jh, w, h)
            boxes = boxes * torch.tensor([w / jw, h / jh, w / jw, h / jh], dtype=torch.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        boxed, scale, pad = letterbox(img, size)
        images.append(boxed)
        targets.append(_keep_nondegenerate(_to_letterbox(boxes, scale, pad), labels, f))
        files.append(str(f))
    return {"images": stack_images(images, str(path)), "targets": targets,
            "names": [n for _, n in cats], "files": files}
