"""letterbox, read_yolo and read_coco on tiny fixtures written with Pillow."""
import json

import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from box_checks import tight_box

from advbench.data.formats import DataError, letterbox
from advbench.tasks.detection.formats import read_coco, read_yolo

# (file, size (W, H), mode, [(class, pixel box [x1, y1, x2, y2) )]); class 1 of image b is drawn green.
FIXTURE = [
    ("a.png", (40, 30), "RGB", [(0, [5, 6, 21, 18])]),
    ("b.png", (24, 48), "RGB", [(1, [2, 4, 14, 20]), (0, [10, 28, 22, 44])]),
    ("c.png", (50, 50), "L", []),  # greyscale, no label file: the split becomes RGB
]
COLOURS = {0: (255, 0, 0), 1: (0, 255, 0)}


def _draw(path, size, mode, objs):
    im = Image.new(mode, size, 0)
    d = ImageDraw.Draw(im)
    for c, (x1, y1, x2, y2) in objs:
        d.rectangle([x1, y1, x2 - 1, y2 - 1], fill=COLOURS[c])  # Pillow's rectangle includes its end pixel
    im.save(path)


@pytest.fixture
def yolo(tmp_path):
    """The FIXTURE images in a YOLO layout under tmp_path, with data.yaml listing names."""
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    for name, (w, h), mode, objs in FIXTURE:
        _draw(tmp_path / "images" / "val" / name, (w, h), mode, objs)
        if objs:
            lines = [f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                     for c, (x1, y1, x2, y2) in objs]
            (tmp_path / "labels" / "val" / name.replace(".png", ".txt")).write_text("\n".join(lines) + "\n")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"val": "images/val", "names": ["red", "green"]}))
    return tmp_path


def test_letterbox_by_hand():
    img = torch.full((3, 20, 30), 200, dtype=torch.uint8)  # H=20, W=30
    out, scale, pad = letterbox(img, 64)
    assert out.shape == (3, 64, 64) and scale == pytest.approx(64 / 30) and pad == (0, 10)
    # 20 * 64/30 = 42.67 -> 43 rows of content at rows 10..52; 10 grey rows above, 11 below.
    assert (out[:, :10] == 114).all() and (out[:, 53:] == 114).all() and (out[:, 10:53] == 200).all()
    box = torch.tensor([3.0, 4.0, 15.0, 10.0]) * scale + torch.tensor([0.0, 10.0, 0.0, 10.0])
    assert box.tolist() == pytest.approx([6.4, 18.5333, 32.0, 31.3333], abs=1e-3)
    tall, scale, pad = letterbox(torch.zeros(1, 30, 20, dtype=torch.uint8), 64, fill=7)
    assert pad == (10, 0) and (tall[:, :, :10] == 7).all() and (tall[:, :, 53:] == 7).all()


def test_read_yolo_boxes_match_drawn_rectangles(yolo):
    out = read_yolo(yolo / "data.yaml", "val", 64)
    assert out["names"] == ["red", "green"] and [f.split("/")[-1] for f in out["files"]] == ["a.png", "b.png", "c.png"]
    assert out["images"].shape == (3, 3, 64, 64) and out["images"].dtype == torch.uint8
    for img, t, (_, _, _, objs) in zip(out["images"], out["targets"], FIXTURE):
        assert t["labels"].tolist() == [c for c, _ in objs]
        assert t["boxes"].shape == (len(objs), 4) and t["boxes"].dtype == torch.float32
        for box, c in zip(t["boxes"].tolist(), t["labels"].tolist()):
            ch = 0 if c == 0 else 1
            drawn = (img[ch] > 127) & (img[1 - ch] < 64) & (img[2] < 64)
            assert box == pytest.approx(tight_box(drawn), abs=1.0)


def test_read_yolo_names_dict_and_txt_list(yolo):
    (yolo / "val.txt").write_text("images/val/b.png\n./images/val/a.png\n")
    (yolo / "d.yaml").write_text(yaml.safe_dump({"path": ".", "val": "val.txt", "names": {0: "red", 1: "green"}}))
    out = read_yolo(yolo / "d.yaml", "val", 32)
    assert out["names"] == ["red", "green"] and out["images"].shape == (2, 3, 32, 32)
    assert out["targets"][0]["labels"].tolist() == [1, 0]


def test_read_yolo_segment_line(yolo):
    (yolo / "labels" / "val" / "c.txt").write_text("1 0.2 0.2 0.6 0.3 0.4 0.8\n")
    t = read_yolo(yolo / "data.yaml", "val", 50)["targets"][2]
    assert t["boxes"][0].tolist() == pytest.approx([10.0, 10.0, 30.0, 40.0])


@pytest.mark.parametrize("line, words", [("0 0.5 0.5 0.2", "4 numbers"), ("2 0.5 0.5 0.2 0.2", "class 2"),
                                         ("0 0.5 0.5 1.5 0.2", r"outside \[0, 1\]"),
                                         ("x 0.5 0.5 0.2 0.2", "non-numeric")])
def test_read_yolo_bad_label_lines(yolo, line, words):
    (yolo / "labels" / "val" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n" + line + "\n")
    with pytest.raises(DataError, match=words) as e:
        read_yolo(yolo / "data.yaml", "val", 64)
    assert "a.txt:2:" in str(e.value) and "\n" not in str(e.value)


def test_read_yolo_bad_layout(yolo):
    (yolo / "e.yaml").write_text(yaml.safe_dump({"val": "images/nowhere", "names": ["red"]}))
    with pytest.raises(DataError, match="nowhere"):
        read_yolo(yolo / "e.yaml", "val", 64)
    with pytest.raises(DataError, match="no 'train:' entry"):
        read_yolo(yolo / "data.yaml", "train", 64)
    (yolo / "images" / "empty").mkdir()
    (yolo / "f.yaml").write_text(yaml.safe_dump({"val": "images/empty", "names": ["red"]}))
    with pytest.raises(DataError, match="no image files"):
        read_yolo(yolo / "f.yaml", "val", 64)
    with pytest.raises(DataError, match="missing.yaml"):
        read_yolo(yolo / "missing.yaml", "val", 64)
    (yolo / "images" / "val" / "z.png").write_text("not an image")
    with pytest.raises(DataError, match="z.png"):
        read_yolo(yolo / "data.yaml", "val", 64)


def _coco(tmp_path):
    images, anns = [], []
    ids = {0: 3, 1: 7}  # non-contiguous category ids
    for i, (name, (w, h), _, objs) in enumerate(FIXTURE):
        images.append({"id": 10 + i, "file_name": name, "width": w, "height": h})
        for c, (x1, y1, x2, y2) in objs:
            anns.append({"id": len(anns), "image_id": 10 + i, "category_id": ids[c],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    anns.append({"id": 99, "image_id": 10, "category_id": 7, "bbox": [0, 0, 40, 30], "iscrowd": 1})
    anns.append({"id": 98, "image_id": 11, "category_id": 3, "bbox": [1, 1, 0, 5], "iscrowd": 0})
    cats = [{"id": 7, "name": "green"}, {"id": 3, "name": "red"}]
    return {"images": images, "annotations": anns, "categories": cats}


def test_read_coco_matches_yolo(yolo):
    (yolo / "instances.json").write_text(json.dumps(_coco(yolo)))
    c = read_coco(yolo / "instances.json", yolo / "images" / "val", 64)
    y = read_yolo(yolo / "data.yaml", "val", 64)
    assert c["names"] == y["names"] == ["red", "green"] and c["files"] == y["files"]
    assert torch.equal(c["images"], y["images"])
    for tc, ty in zip(c["targets"], y["targets"]):
        assert torch.equal(tc["labels"], ty["labels"])
        assert torch.allclose(tc["boxes"], ty["boxes"], atol=1e-3)


def test_read_coco_errors(yolo):
    data = _coco(yolo)
    data["annotations"][0]["category_id"] = 5
    (yolo / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"bad\.json: annotation 0: category_id 5"):
        read_coco(yolo / "bad.json", yolo / "images" / "val", 64)
    data = _coco(yolo)
    data["images"][0]["file_name"] = "gone.png"
    (yolo / "gone.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="gone.png"):
        read_coco(yolo / "gone.json", yolo / "images" / "val", 64)
    (yolo / "broken.json").write_text("{")
    with pytest.raises(DataError, match="broken.json"):
        read_coco(yolo / "broken.json", yolo / "images" / "val", 64)
