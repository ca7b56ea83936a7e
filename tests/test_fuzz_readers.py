"""Fuzzing the readers of users' files (hypothesis, derandomized: the same examples on every run): YOLO label
files and data YAMLs, COCO JSONs, CSV and JSON lines text, masks. Whatever the bytes, a reader loads them or
raises advbench's own one-line error; no other exception escapes to become a traceback."""
import copy
import io
import json

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

from advbench.config import DatasetConf
from advbench.tasks.text import data as text
from advbench.tasks.detection.formats import read_coco, read_yolo
from advbench.tasks.segmentation.data import read_pair
from advbench.errors import AdvbenchError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def loads_or_explains(read, *args):
    """``read(*args)``, where an AdvbenchError passes if it is one short line; any other exception fails."""
    try:
        return read(*args)
    except AdvbenchError as err:
        message = str(err)
        assert "\n" not in message and "\r" not in message and 0 < len(message) < 500, message
        return None


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A valid YOLO and COCO layout the fuzzed files point into: two small images, a label file, a list file."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(root / "images" / "train" / "a.png")
    Image.fromarray(np.full((10, 10), 200, np.uint8)).save(root / "images" / "train" / "b.png")
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "list.txt").write_text("images/train/a.png\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "names": ["p", "q"]}))
    return root


# Values that reach deep into a reader: names of the layout's own files, ids near the valid ones, numbers of
# every kind (NaN, infinities, floats past float32, integers past float64), strings no path can hold.
NAMES = st.sampled_from(["images/train", "list.txt", "a.png", "b.png", "missing.png", "labels", ".", "", "\x00"])
SAFE_TEXT = st.text(st.characters(blacklist_characters="/\\.~", blacklist_categories=("Cs",)), max_size=6)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.integers(), st.floats(), NAMES, SAFE_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.one_of(st.integers(-1, 3), SAFE_TEXT), inner, max_size=3), max_leaves=8)


DELETE = object()
# An edit's value: a deletion, a value chosen to break a reader (wrong type, out of range, past float64), any value
EDITS = st.lists(st.tuples(st.integers(0, 400), st.one_of(
    st.just(DELETE), st.sampled_from([None, True, 0, -1, 1, 2, 5, 1.5, float("inf"), float("nan"), 10 ** 400, 1e308,
                                      "", "1", "abc", "a.png", "missing.png", "images/train", "list.txt", [], {},
                                      [1, 2, 3, 4], [0, 0, 0, 0]]), VALUES)), max_size=3)


def _paths(doc, prefix=()):
    """Every place in a JSON-like document: the root, each value of a dict, each item of a list."""
    yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


def _edited(doc, edits: list):
    """A copy of valid ``doc`` with a few places set or deleted: most of it stays valid, so the reader gets past
    its first checks to the one an edit breaks."""
    doc = copy.deepcopy(doc)
    for index, value in edits:
        places = list(_paths(doc))
        path = places[index % len(places)]
        if not path:
            doc = doc if value is DELETE else copy.deepcopy(value)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(value)
    return doc


NUMBER = st.one_of(st.floats(0, 1), st.floats(), st.sampled_from(["nan", "inf", "-inf", "1e400", "1e-400", "x",
                                                                  "1_0", "\u0661", "-0", "0x1"]))
BOX_LINE = st.tuples(st.integers(-1, 3) | NUMBER, st.lists(st.floats(0, 1) | NUMBER, min_size=4, max_size=4))
POLYGON_LINE = st.tuples(st.integers(0, 2), st.lists(st.floats(0, 1) | NUMBER, min_size=0, max_size=9))
LABEL_LINES = st.lists(st.one_of(BOX_LINE, POLYGON_LINE).map(lambda t: " ".join(map(str, [t[0], *t[1]]))),
                       max_size=5).map("\n".join)


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), LABEL_LINES.map(str.encode)))
def test_yolo_label_files(root, content):
    (root / "labels" / "train" / "a.txt").write_bytes(content)
    out = loads_or_explains(read_yolo, root / "data.yaml", "train", 16)
    if out is not None:
        assert out["images"].shape == (2, 3, 16, 16) and all(t["boxes"].shape[1:] == (4,) for t in out["targets"])


VALID_YAML = {"path": ".", "train": ["images/train", "list.txt"], "names": {0: "p", 1: "q"}}


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), EDITS.map(lambda e: yaml.safe_dump(_edited(VALID_YAML, e)))
                         .map(str.encode)))
def test_yolo_data_yaml(root, content):
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.25 0.25\n")
    (root / "fuzz.yaml").write_bytes(content)
    out = loads_or_explains(read_yolo, root / "fuzz.yaml", "train", 16)
    if out is not None:
        assert len(out["images"]) == len(out["targets"]) == len(out["files"]) and out["names"]


VALID_COCO = {
    "images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 12}, {"id": 2, "file_name": "b.png"}],
    "categories": [{"id": 1, "name": "p"}, {"id": 5, "name": "q"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 5, 4], "iscrowd": 0},
                    {"id": 2, "image_id": 2, "category_id": 5, "bbox": [0.5, 0, 3, 3.5]}]}


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), EDITS.map(lambda e: json.dumps(_edited(VALID_COCO, e)))
                         .map(str.encode)))
def test_coco_json(root, content):
    (root / "fuzz.json").write_bytes(content)
    out = loads_or_explains(read_coco, root / "fuzz.json", root / "images" / "train", 16)
    if out is not None:
        assert len(out["images"]) == len(out["targets"]) and all(
            t["labels"].max() < len(out["names"]) for t in out["targets"] if len(t["labels"]))


def _cfg(**keys):
    return OmegaConf.merge(OmegaConf.structured(DatasetConf), {"max_len": 8, "min_freq": 1, **keys})


CELLS = st.one_of(SAFE_TEXT, st.sampled_from(["", '"', '""', ",", "\r", "\n", "label", "text", "a b", "\x00"]))
ROWS = st.lists(st.one_of(st.lists(CELLS, min_size=2, max_size=2), st.lists(CELLS, max_size=4)), max_size=6)
CSV_TEXT = st.tuples(st.booleans(), ROWS.map(lambda rows: [",".join(row) for row in rows])).map(
    lambda t: ("\ufeff" if t[0] else "") + "\n".join(["text,label", *t[1]]))


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), CSV_TEXT.map(str.encode)))
def test_csv_text(root, content):
    (root / "fuzz.csv").write_bytes(content)
    path = str(root / "fuzz.csv")
    out = loads_or_explains(text.encoded(text.text_csv), _cfg(train_csv=path, test_csv=path))
    if out is not None:
        assert out.train[0].shape[1] == 8 and len(out.train[1]) == len(out.train[0])


JSON_LINES = st.lists(st.one_of(
    EDITS.map(lambda e: json.dumps(_edited({"text": "sun day", "label": "sun"}, e))),
    st.fixed_dictionaries({"text": SAFE_TEXT, "label": SAFE_TEXT | st.integers(0, 2)}).map(json.dumps),
    st.sampled_from(["", "{", "[" * 3000, '{"text": "a", "label": null}'])), max_size=5)


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), JSON_LINES.map("\n".join).map(str.encode)))
def test_json_lines_text(root, content):
    (root / "fuzz.jsonl").write_bytes(content)
    path = str(root / "fuzz.jsonl")
    out = loads_or_explains(text.encoded(text.text_json), _cfg(train_json=path, test_json=path))
    if out is not None:
        assert out.train[0].shape[1] == 8 and len(out.classes) >= 1


def _image_bytes(mode: str, size: tuple, seed: int, fmt: str) -> bytes:
    """An image file of ``mode`` and ``size`` (w, h) in format ``fmt``, its pixels drawn from ``seed``."""
    w, h = size
    rng = np.random.default_rng(seed)
    kinds = {"L": np.uint8, "P": np.uint8, "1": bool, "I;16": np.uint16, "I": np.int32, "F": np.float32,
             "RGB": np.uint8}
    values = rng.integers(-3, 300, (h, w, 3) if mode == "RGB" else (h, w)).astype(kinds[mode])
    im = Image.fromarray(values)
    im = im.convert(mode) if im.mode != mode else im
    out = io.BytesIO()
    im.save(out, format="TIFF" if mode in ("I", "F") else fmt)  # PNG holds neither 32-bit mode
    return out.getvalue()


MASKS = st.builds(_image_bytes, st.sampled_from(["L", "P", "1", "I;16", "I", "F", "RGB"]),
                  st.sampled_from([(6, 5), (5, 6), (1, 1)]), st.integers(0, 3), st.sampled_from(["PNG", "TIFF"]))


def _damaged(data: bytes, edits: list, cut) -> bytes:
    data = bytearray(data)
    for at, value in edits:
        data[at % len(data)] = value
    return bytes(data[:cut] if cut is not None else data)


@FUZZ
@given(content=st.one_of(
    st.binary(max_size=200), MASKS,
    st.builds(_damaged, MASKS, st.lists(st.tuples(st.integers(0, 10 ** 4), st.integers(0, 255)), max_size=3),
              st.none() | st.integers(0, 300))))
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns of the damage before it refuses the file
def test_masks(root, content):
    image = root / "mask_image.png"
    if not image.exists():
        Image.fromarray(np.full((5, 6, 3), 90, np.uint8)).save(image)
    (root / "mask.png").write_bytes(content)
    out = loads_or_explains(read_pair, image, root / "mask.png", 4, 255)
    if out is not None:
        x, mask = out
        assert x.shape == (3, 4, 4) and mask.shape == (4, 4) and int(mask.min()) >= 0
