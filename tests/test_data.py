"""Data loading: the IDX reader on fixture files, splits, the tensor loader, augmentation, normalization."""
import gzip

import numpy as np
import pytest
import torch

from advbench.data import load_data
from advbench.data.loaders import TensorLoader, random_crop_flip
from advbench.errors import AdvbenchError
from advbench.models import Normalize, small_cnn
from advbench.data.images import read_idx
from conftest import compose_config


def write_idx(path, array: np.ndarray, gz=True):
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    (gzip.open if gz else open)(path, "wb").write(header + array.tobytes())


@pytest.fixture
def fashion_root(tmp_path):
    """A tiny Fashion-MNIST in torchvision's raw layout: 30 train and 10 test images."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), gz=False)
    return tmp_path


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (True, False):
        path = tmp_path / ("a.gz" if gz else "a")
        write_idx(path, array, gz)
        np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "t", np.zeros((5, 2), np.uint8), gz=False)
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(AdvbenchError, match="truncated"):
        read_idx(tmp_path / "t")
    (tmp_path / "f").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(AdvbenchError, match="not an IDX file"):
        read_idx(tmp_path / "f")
    (tmp_path / "g.gz").write_bytes(b"\x00\x00\x08\x01 not gzip")
    with pytest.raises(AdvbenchError, match="g.gz.*gzip"):
        read_idx(tmp_path / "g.gz")


def test_fashion_mnist_from_data_root(fashion_root):
    cfg = compose_config(["dataset=fashion_mnist", f"dataset.root={fashion_root}", "dataset.val_size=5"]).dataset
    data = load_data(cfg)
    assert data.shape == (1, 28, 28) and data.n_classes == 10
    assert [len(s[1]) for s in (data.train, data.val, data.test)] == [25, 5, 10]
    assert data.train[0].dtype == torch.uint8


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("advbench.data.images.DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    cfg = compose_config(["dataset=fashion_mnist", f"dataset.root={tmp_path}"]).dataset
    with pytest.raises(AdvbenchError, match="dataset-fashion-mnist.*dataset.download=true"):
        load_data(cfg)


def test_digits_split_is_fixed_stratified_and_disjoint(digits):
    x_train, y_train = digits.train
    x_test, y_test = digits.test
    assert len(y_train) + len(digits.val[1]) + len(y_test) == 1797
    assert 0 <= x_train.min() and x_train.max() <= 1
    all_labels = torch.cat([y_train, digits.val[1], y_test])
    expected = 0.25 * torch.bincount(all_labels, minlength=10)
    assert (torch.bincount(y_test, minlength=10) - expected).abs().max() <= 1  # stratified
    again = load_data(compose_config(["dataset=digits", "seed=7"]).dataset)
    assert torch.equal(again.test[0], x_test) and torch.equal(again.val[0], digits.val[0])
    train_rows = {tuple(r) for r in x_train.flatten(1).tolist()}
    assert not any(tuple(r) in train_rows for r in digits.val[0].flatten(1).tolist())


def test_val_size_zero_is_allowed_and_out_of_range_is_an_error():
    assert len(load_data(compose_config(["dataset=digits", "dataset.val_size=0"]).dataset).val[1]) == 0
    with pytest.raises(AdvbenchError, match="dataset.val_size"):
        load_data(compose_config(["dataset=digits", "dataset.val_size=5000"]).dataset)


def test_tensor_loader_visits_each_example_once_and_scales_uint8():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1) * 25
    y = torch.arange(10)
    batches = list(TensorLoader(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    xs = torch.cat([b[0] for b in batches])
    assert xs.dtype == torch.float32 and torch.allclose(xs.flatten(), seen.float() * 25 / 255)


def test_random_crop_flip_is_a_shifted_or_mirrored_window():
    x = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert not torch.equal(out, x)


def test_models_normalize_inside():
    norm = Normalize([0.5, 0.25], [0.5, 0.25])
    assert torch.allclose(norm(torch.full((1, 2, 1, 1), 0.5)), torch.tensor([0.0, 1.0]).view(1, 2, 1, 1))
    model = small_cnn((1, 28, 28), 10, [0.2860], [0.3530])
    assert isinstance(model[0], Normalize) and model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_mean_std_must_match_the_channels():
    with pytest.raises(AdvbenchError, match="dataset.mean/std"):
        load_data(compose_config(["dataset=digits", "dataset.mean=[0.1,0.2,0.3]"]).dataset)
