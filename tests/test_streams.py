"""Streamed data: an image folder, a torchvision data set class on a local root, a user's _target_ data set."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from advbench.data.streams import Stream, StreamLoader, labels_of
from helpers import cli, metrics_without_timing, one_line_error

RUN = ["model=small_cnn", "epochs=1", "batch_size=8", "progress=false", "threads=1", "val.attack.steps=2",
       "eval.attacks.pgd20.steps=2", "dataset.workers=0"]
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200)}


def write_folder(root, per_class: int, size=(12, 10)):
    """One sub-folder per class of noisy PNGs of the class's colour (sizes vary: the run resizes them)."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size[1] + i % 3, size[0], 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_trains_and_evaluates_with_its_class_names(tmp_path):
    write_folder(tmp_path / "train", 12)
    write_folder(tmp_path / "test", 4)
    cli(*RUN, "dataset=image_folder", f"dataset.train_dir={tmp_path}/train", f"dataset.test_dir={tmp_path}/test",
        "dataset.resize=8", "dataset.val_size=6", "eval.save_examples=3", f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["classes"] == ["cat", "dog", "owl"] and results["n_examples"] == 12
    assert 0 <= results["robust_acc"] <= results["clean_acc"] <= 1
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["images_per_s"] > 0 and row["val_clean_acc"] is not None
    assert (tmp_path / "run" / "adversarial_examples.png").is_file()


def test_an_image_folders_test_split_comes_in_a_fixed_random_order_so_its_first_examples_span_classes(tmp_path):
    from advbench.data.external import image_folder
    from conftest import compose_config
    write_folder(tmp_path / "train", 2)
    write_folder(tmp_path / "test", 4)
    cfg = compose_config(["dataset=image_folder", f"dataset.train_dir={tmp_path}/train",
                          f"dataset.test_dir={tmp_path}/test", "dataset.resize=8"]).dataset
    labels = [label for _, label in image_folder(cfg).test.samples]
    assert sorted(labels) == [0] * 4 + [1] * 4 + [2] * 4  # every image once (ImageFolder: class by class)
    assert len(set(labels[:4])) > 1  # eval.n_examples=4 does not score the first class alone
    assert labels == [label for _, label in image_folder(cfg).test.samples]  # the same order every run


def write_idx(path, array: np.ndarray, code: int):
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(">u1" if code == 0x08 else array.dtype).tobytes())


def test_a_torchvision_class_streams_from_a_local_root(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        labels = np.arange(n) % 3
        images = (labels[:, None, None] * 80 + rng.integers(0, 40, (n, 28, 28))).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 0x08)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), 0x08)
    cli(*RUN, "dataset=torchvision", "dataset.class_name=FashionMNIST", f"dataset.root={tmp_path}",
        "dataset.mean=[0.5]", "dataset.std=[0.25]", "dataset.val_size=10", f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["n_examples"] == 20 and results["classes"][:2] == ["T-shirt/top", "Trouser"]


class Squares(torch.utils.data.Dataset):
    """A user's own data set: class c is a bright square in corner c of a dark 3x8x8 image."""

    classes = ["top left", "bottom right"]

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = torch.full((3, 8, 8), 0.1)
        label = i % 2
        x[:, label * 4:label * 4 + 4, label * 4:label * 4 + 4] = 0.9
        return x, label


def test_a_custom_target_data_set_streams(tmp_path):
    cli(*RUN, "dataset=custom", "+dataset.train_set._target_=test_streams.Squares", "+dataset.train_set.n=40",
        "+dataset.test_set._target_=test_streams.Squares", "+dataset.test_set.n=10", "dataset.val_size=8",
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["classes"] == ["top left", "bottom right"] and results["n_examples"] == 10


@pytest.mark.parametrize("overrides, expected", [
    (["dataset=image_folder"], "dataset.train_dir is not set"),
    (["dataset=image_folder", "dataset.train_dir=/nonexistent", "dataset.test_dir=/nonexistent"],
     "dataset.train_dir=/nonexistent: no such folder"),
    (["dataset=torchvision", "dataset.class_name=Nope"], "dataset.class_name='Nope' is not a torchvision"),
    (["dataset=custom"], "dataset=custom needs dataset.train_set and dataset.test_set"),
    (["dataset=digits", "dataset.augment=[color_jitter]"], "dataset.augment=['color_jitter']: dataset=digits"),
    (["dataset=digits", "dataset.augment=[sharpen]"], "dataset.augment: sharpen unknown"),
])
def test_streamed_data_errors_are_one_line(tmp_path, overrides, expected):
    code, err = cli(*RUN, *overrides, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert code != 0
    one_line_error(err, expected)


def test_a_stream_loads_prefixes_once_and_labels_from_the_targets_list():
    reads = []

    class Counted(Squares):
        targets = [i % 2 for i in range(30)]

        def __getitem__(self, i):
            reads.append(i)
            x, y = super().__getitem__(i)
            return (x * 255).to(torch.uint8), y
    stream = Stream(Counted(30), workers=0)
    x, y = stream[0][:12], stream[1][:12]
    assert x.shape == (12, 3, 8, 8) and x.dtype == torch.uint8 and y.tolist() == [i % 2 for i in range(12)]
    assert sorted(reads) == list(range(12))  # read once for both columns
    assert len(stream[0]) == 30 and labels_of(stream.dataset).tolist() == Counted.targets


def test_stream_loader_order_follows_its_generator():
    stream = Stream(Squares(20), workers=0)
    stream.augmented = stream.dataset

    def order(seed):
        loader = StreamLoader(stream, 5, torch.Generator().manual_seed(seed), "cpu")
        return torch.cat([x[:, 0, 0, 0] + torch.as_tensor(y) for x, y in loader])
    first, again, other = order(1), order(1), order(2)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert all(x.dtype == torch.float32 and x.max() <= 1 for x, _ in StreamLoader(stream, 5, None, "cpu"))


class Jittered(Squares):
    """Squares with noise from torch's, Python's and NumPy's global generators, as a user's augmentation."""

    def __getitem__(self, i):
        x, label = super().__getitem__(i)
        return x + torch.rand(()) + random.random() + float(np.random.rand()), label


def epochs_of(workers: int, generator_state=None, epochs: int = 2) -> tuple:
    """Each epoch's batches of a Jittered stream read by ``workers`` workers from ``generator_state``, and the
    generator's state after them."""
    generator = torch.Generator().manual_seed(3)
    if generator_state is not None:
        generator.set_state(generator_state)
    stream = Stream(Jittered(12), workers=workers)
    loader = StreamLoader(stream, 5, generator, "cpu")
    out = [[(x.clone(), y.clone()) for x, y in loader] for _ in range(epochs)]
    return out, generator.get_state()


def test_stream_draws_depend_on_the_generator_only_not_on_workers_or_restarts():
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    (one, two), _ = epochs_of(0)
    # Reading in this process (workers=0) leaves the training's own random states where they were.
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    _, after_one = epochs_of(0, epochs=1)
    for workers in (1, 2):
        other, _ = epochs_of(workers)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                   for e, f in zip((one, two), other) for a, b in zip(e, f))
        # A fresh loader (new workers) from the state after epoch 1 repeats epoch 2: what a resume does.
        (resumed,), _ = epochs_of(workers, after_one, epochs=1)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(two, resumed))
    # The noise is drawn per example and epoch: not the same twice.
    assert not torch.equal(torch.cat([x for x, _ in one]), torch.cat([x for x, _ in two]))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path, workers):
    write_folder(tmp_path / "train", 8)
    write_folder(tmp_path / "test", 2)
    run = [*RUN, "epochs=2", "dataset=image_folder", f"dataset.train_dir={tmp_path}/train",
           f"dataset.test_dir={tmp_path}/test", "dataset.resize=8", "dataset.val_size=4", f"dataset.workers={workers}",
           "dataset.augment=[random_crop,flip,rotation]", "attack=pgd", "attack.steps=1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    cli(*run, f"hydra.run.dir={whole}", cwd=tmp_path, check=True)
    code, err = cli(*run, "stop_after_epoch=1", f"hydra.run.dir={parts}", cwd=tmp_path)
    assert code == 3 and f"resume={parts}" in err
    cli(f"resume={parts}", "progress=false", cwd=tmp_path, check=True)
    assert len(metrics_without_timing(whole)) == 2
    assert metrics_without_timing(parts) == metrics_without_timing(whole)
    sa, sb = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (whole, parts))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
