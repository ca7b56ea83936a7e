"""Readers that explain: a user's data that cannot train is a one-line error naming the file (and the key that
fixes it), exit 2, before the first epoch; data that can (a one-class detection set, an Excel CSV) loads."""
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import cli, one_line_error

RUN = ["model=small_cnn", "epochs=1", "batch_size=8", "progress=false", "threads=1", "val.attack.steps=1",
       "eval.attacks.pgd20.steps=1", "eval.n_examples=8"]


def refused(tmp_path, *overrides, expected: str, run: str = "run") -> str:
    """The one error line of a run that must stop before training: exit 2, no traceback, no epoch written."""
    code, err = cli(*overrides, f"hydra.run.dir={tmp_path}/{run}", cwd=tmp_path)
    assert code == 2, err
    assert not (tmp_path / run / "metrics.jsonl").exists()
    return one_line_error(err, expected)


def write_classes(root, sizes: dict):
    """root/<class>/<i>.png, each image of the (width, height) that ``sizes[(class, i)]`` gives, else 8x8."""
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            w, h = sizes.get((name, i), (8, 8))
            Image.fromarray(np.full((h, w, 3), 60 + 100 * (name == "dog"), np.uint8)).save(root / name / f"{i}.png")


def folder_run(tmp_path, *extra):
    return (*RUN, "dataset=image_folder", f"dataset.train_dir={tmp_path}/train", f"dataset.test_dir={tmp_path}/test",
            "dataset.val_size=2", "dataset.workers=0", *extra)


def test_image_folder_of_mixed_sizes_names_both_files_and_dataset_resize(tmp_path):
    write_classes(tmp_path / "train", {})
    write_classes(tmp_path / "test", {("dog", 2): (8, 11)})
    line = refused(tmp_path, *folder_run(tmp_path), expected="dataset.resize=<n>")
    assert "dataset.test_dir" in line and "test/dog/2.png is 8x11" in line and "train/cat/0.png is 8x8" in line


def test_image_folder_with_an_unreadable_file_names_it_before_any_worker_reads_it(tmp_path):
    write_classes(tmp_path / "train", {("cat", 1): (10, 6)})  # resized: sizes may differ
    write_classes(tmp_path / "test", {})
    (tmp_path / "train" / "dog" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    line = refused(tmp_path, *folder_run(tmp_path, "dataset.resize=8"), expected="not a readable image")
    assert "train/dog/9.png" in line


def write_pairs(root, image_size=(12, 10), mask_size=None, n=4):
    """seg_folder's layout: root/{train,test}/images/<i>.png and masks/<i>.png (class i % 2 + 1 on a square)."""
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            w, h = image_size
            Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / split / "images" / f"{i}.png")
            mw, mh = mask_size or image_size
            mask = np.zeros((mh, mw), np.uint8)
            mask[2:6, 2:6] = 1 + i % 2
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{i}.png")


SEG = [*RUN, "dataset=seg_folder", "model=unet_tiny", "dataset.image_size=8", "dataset.val_size=1"]


def test_seg_folder_mask_of_another_size_than_its_image_names_both_sizes(tmp_path):
    write_pairs(tmp_path, image_size=(12, 10), mask_size=(6, 5))
    line = refused(tmp_path, *SEG, f"dataset.path={tmp_path}", expected="a mask needs its image's size")
    assert "train/masks/0.png: the mask is 6x5 but its image 0.png is 12x10" in line


def test_seg_folder_unreadable_image_or_mask_is_named(tmp_path):
    write_pairs(tmp_path)
    (tmp_path / "test" / "masks" / "1.png").write_bytes(b"not a png")
    line = refused(tmp_path, *SEG, f"dataset.path={tmp_path}", expected="not a readable image")
    assert "test/masks/1.png" in line


def test_seg_folder_with_matching_masks_still_loads(tmp_path):
    from omegaconf import OmegaConf

    from advbench.config import DatasetConf
    from advbench.data import load_data
    write_pairs(tmp_path)
    data = load_data(OmegaConf.merge(OmegaConf.structured(DatasetConf), {
        "name": "seg_folder", "path": str(tmp_path), "image_size": 8, "val_size": 1, "mean": [0.5] * 3,
        "std": [0.25] * 3}))
    assert data.train[1].shape == (3, 8, 8) and set(data.test[1].unique().tolist()) == {0, 1, 2}


TEXT = ["model=textcnn", "training=mixed", "attack=fgm", "epochs=1", "batch_size=8", "progress=false", "threads=1",
        "dataset.val_size=2", "eval=quick"]


def test_a_csv_with_a_byte_order_mark_loads(tmp_path):
    from omegaconf import OmegaConf

    from advbench.config import DatasetConf
    from advbench.data import load_data
    rows = "".join(f"{word} day {i},{word}\r\n" for i in range(6) for word in ("sun", "rain"))
    (tmp_path / "train.csv").write_bytes(("text,label\r\n" + rows).encode("utf-8-sig"))  # Excel's "CSV UTF-8"
    data = load_data(OmegaConf.merge(OmegaConf.structured(DatasetConf), {
        "name": "text_csv", "train_csv": str(tmp_path / "train.csv"), "test_csv": str(tmp_path / "train.csv"),
        "val_size": 2, "min_freq": 1}))
    assert data.classes == ["rain", "sun"] and len(data.test[1]) == 12


@pytest.mark.parametrize("kind, content, where", [
    ("csv", "text,label\nsun day,sun\nrain day,\nwet,rain\n", "line 3"),
    ("json", '{"text": "sun day", "label": "sun"}\n{"text": "rain", "label": "rain"}\n'
             '{"text": "wet", "label": null}\n', "line 3"),
])
def test_an_empty_or_null_label_is_named_with_its_line(tmp_path, kind, content, where):
    path = tmp_path / f"train.{kind}"
    path.write_text(content)
    keys = ([f"dataset.train_csv={path}", f"dataset.test_csv={path}"] if kind == "csv"
            else [f"dataset.train_json={path}", f"dataset.test_json={path}"])
    line = refused(tmp_path, *TEXT, f"dataset=text_{kind}", *keys, expected="dataset.label_column='label'")
    assert f"train.{kind}, {where}: label" in line


def test_fortunes_without_categories_is_one_line(tmp_path):
    refused(tmp_path, *TEXT, "dataset=fortunes", "dataset.categories=[]", expected="dataset.categories=[]: name")


def test_a_missing_tokenizer_folder_names_its_key_not_the_hubs_rules(tmp_path):
    line = refused(tmp_path, *TEXT, "dataset=synthetic_text", "dataset.tokenizer=./no/such/tokenizer",
                   expected="dataset.tokenizer=./no/such/tokenizer: no such folder")
    assert "Repo id" not in line
    refused(tmp_path, *TEXT, "dataset=synthetic_text", "model=hf", "model.name_or_path=./no_such_model_dir",
            expected="model.name_or_path=./no_such_model_dir: no such folder", run="hf_model")
    refused(tmp_path, *TEXT, "dataset=synthetic_text", "model=hf", "model.name_or_path=org/model",
            "model.tokenizer=/no/such/dir", expected="model.tokenizer=/no/such/dir: no such folder", run="hf_tokenizer")


def test_local_path_keeps_hub_ids_and_expands_home(tmp_path, monkeypatch):
    from advbench.models.hf import local_path
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tok").mkdir()
    assert local_path("~/tok", "dataset.tokenizer") == str(tmp_path / "tok")
    assert local_path("bert-base-uncased", "k") == "bert-base-uncased" and local_path("org/name", "k") == "org/name"


def write_one_class_yolo(root):
    """A person detector's data: 8 grey 32x32 images with one bright box each, one class in 'names'."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(8 if split == "train" else 4):
            pixels = np.full((32, 32), 40, np.uint8)
            x = 2 + 3 * i
            pixels[8:20, x:x + 10] = 220
            Image.fromarray(pixels).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text(f"0 {(x + 5) / 32} {14 / 32} {10 / 32} {12 / 32}\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "names": ["person"]}))
    return root / "data.yaml"


def test_a_one_class_detection_set_loads_and_trains(tmp_path):
    data_yaml = write_one_class_yolo(tmp_path / "data")
    cli("dataset=yolo", f"dataset.path={data_yaml}", "model=yolo_tiny", "training=standard", "epochs=1",
        "batch_size=4", "dataset.image_size=32", "dataset.val_size=2", "dataset.mean=[0.3]", "dataset.std=[0.3]",
        "eval.attacks.pgd20.steps=1", "val.attack.steps=1", "progress=false", "threads=1",
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["classes"] == ["person"] and results["n_objects"] == 4
    assert 0 <= results["robust_map50"] <= results["clean_map50"] + 1e-9


def test_a_detection_set_without_any_object_is_refused(tmp_path):
    data_yaml = write_one_class_yolo(tmp_path / "data")
    for label in (tmp_path / "data" / "labels" / "train").glob("*.txt"):
        label.unlink()
    refused(tmp_path, *RUN, "dataset=yolo", f"dataset.path={data_yaml}", "model=yolo_tiny", "dataset.image_size=32",
            "dataset.val_size=2", "dataset.mean=[0.3]", "dataset.std=[0.3]",
            expected="the training split holds no labelled object")
