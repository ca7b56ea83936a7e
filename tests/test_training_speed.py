"""The fast training path: device-resident batches and augmentation, compilation, sync-free accounting."""
import json

import pytest
import torch

from advbench.data.loaders import TensorLoader, random_crop_flip
from helpers import TINY, cli

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def batches(device):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(300) % 7
    loader = TensorLoader(x, y, 64, shuffle=True, generator=torch.Generator().manual_seed(3),
                          augment=lambda xb, yb, g: (random_crop_flip(xb, g), yb), device=device)
    return [(xb.cpu(), yb.cpu()) for xb, yb in loader]


def test_augmentation_draws_crops_and_flips_uniformly():
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(4000, 1, 1, 1)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    flipped = out[:, 0, 2, 3] > out[:, 0, 2, 4]  # values rise to the right unless mirrored (row 2 is never padding)
    assert 0.45 < flipped.float().mean() < 0.55
    # the window's top row: padding (all zero) for offsets 0 and 1 of 5, so 2/5 of the crops start there
    assert 0.36 < (out[:, 0, 0].abs().sum(1) == 0).float().mean() < 0.44


@CUDA
def test_device_resident_batches_are_the_cpu_batches():
    """The same draws (order, crop offsets, flips) on the CPU generator: the device path gives the same batches."""
    on_cpu, on_cuda = batches("cpu"), batches("cuda")
    assert len(on_cpu) == len(on_cuda) == 5
    for (a, ya), (b, yb) in zip(on_cpu, on_cuda):
        # the same windows and mirrors: equal up to the last bit of the uint8 -> [0,1] division (a wrong crop
        # or flip moves pixels by multiples of 1/255)
        assert (a - b).abs().max() < 1e-6 and torch.equal(ya, yb)


@CUDA
def test_tensor_loader_keeps_the_images_on_the_device_once():
    x = torch.randint(0, 256, (100, 1, 4, 4), dtype=torch.uint8)
    loader = TensorLoader(x, torch.zeros(100, dtype=torch.long), 32, device="cuda")
    assert loader.x.is_cuda and loader.x.dtype == torch.uint8 and loader.targets.is_cuda
    assert all(xb.is_cuda and yb.is_cuda for xb, yb in loader)


def test_compile_true_trains_through_the_compiled_model_and_saves_plain_weights(tmp_path):
    pytest.importorskip("torch._inductor")
    base = [*TINY, "epochs=1", "training=fast", "attack=fgsm_rs"]
    for name, extra in (("eager", []), ("compiled", ["compile=true"])):
        cli(*base, *extra, f"hydra.run.dir={tmp_path}/{name}", cwd=tmp_path, check=True)
    eager, compiled = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("eager", "compiled"))
    assert "compile: true" in (tmp_path / "compiled" / "config_resolved.yaml").read_text()
    # the same recipe: compiled kernels may round differently in the last bits, never by whole examples
    assert abs(compiled["clean_acc"] - eager["clean_acc"]) <= 0.03
    state = torch.load(tmp_path / "compiled" / "model.pt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)  # loadable into the plain model
