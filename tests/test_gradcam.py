"""Grad-CAM: a hand computation on a tiny CNN, the model left as it was, the default layer of advbench's models,
and job=saliency saliency.method=gradcam through the CLI for a classifier, a detector and a segmenter."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advbench.checks import check_config
from advbench.errors import AdvbenchError
from advbench.evaluation.gradcam import default_layer, gradcam, gradcam_maps
from advbench.models import Normalize, small_cnn
from advbench.models.segmenters import UNetTiny
from advbench.models.yolo_tiny import YoloTiny
from advbench.run_config import plain
from conftest import compose_config
from helpers import cli, one_line_error, png_size


def tiny_cnn() -> nn.Sequential:
    """4x4 -> conv 2x2 stride 2 (channel 0 sums a block, channel 1 its negative) -> linear: the loss is linear in the
    feature maps, so its gradient there is the linear layer's weight."""
    conv = nn.Conv2d(1, 2, 2, stride=2, bias=False)
    linear = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([torch.ones(1, 2, 2), -torch.ones(1, 2, 2)]))
        linear.weight.copy_(torch.cat([torch.full((4,), 1.0), torch.tensor([0.5, 0.5, 0.5, 2.5])])[None])
    return nn.Sequential(conv, nn.Flatten(), linear)


def test_gradcam_equals_a_hand_computation():
    x = torch.arange(32.0).view(2, 1, 4, 4) / 32
    blocks = F.avg_pool2d(x, 2) * 4  # channel 0: each 2x2 block's sum; channel 1: minus it
    # channel weights = the spatial mean of dL/dA: 1 for channel 0, (0.5 + 0.5 + 0.5 + 2.5) / 4 = 1 for channel 1
    cam = (1.0 * blocks - 1.0 * blocks).clamp_min(0)
    assert torch.equal(cam, torch.zeros_like(cam))  # the two channels cancel: ReLU of zero
    model = tiny_cnn()
    assert torch.allclose(gradcam(model, x, lambda out: out[:, 0], "0"), torch.zeros(2, 4, 4))
    with torch.no_grad():
        model[2].weight[0, 4:] = torch.tensor([0.25, 0.25, 0.25, 0.25])  # channel 1 now weighs 0.25
    expected = F.interpolate((blocks - 0.25 * blocks).clamp_min(0), size=(4, 4), mode="bilinear",
                             align_corners=False)[:, 0]
    assert torch.allclose(gradcam(model, x, lambda out: out[:, 0], "0"), expected, atol=1e-6)
    assert torch.isclose(expected[1, 0, 0], 0.75 * x[1, 0, :2, :2].sum())  # a corner keeps its block's value
    # a negative-weighted map is cut by the ReLU: ascending -loss gives the mirror channel, clamped at zero
    flipped = gradcam(model, x, lambda out: -out[:, 0], "0")
    assert torch.equal(flipped, torch.zeros_like(flipped))


def test_the_model_is_left_exactly_as_it_was():
    model = nn.Sequential(Normalize([0.5], [0.5]), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    model.train()
    model[2].eval()  # a mix of modes, and a frozen layer: both must come back as they were
    model[6].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 3, (5,))
    loss = lambda out: F.cross_entropy(out, y, reduction="none")  # noqa: E731
    layer = default_layer(model, x, loss)
    cam = gradcam(model, x, loss, layer)
    assert layer == "4" and cam.shape == (5, 8, 8) and cam.min() >= 0 and cam.max() > 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == [True] * 6 + [False, True]
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics too
    with pytest.raises(AdvbenchError, match="saliency.layer=nope: no such module in Sequential; e.g. 1, 4"):
        gradcam(model, x, loss, "nope")
    with pytest.raises(AdvbenchError, match=r"saliency.layer=6: its output is \(5, 3\), not \(N, C, H, W\)"):
        gradcam(model, x, loss, "6")
    assert all(not m._forward_hooks for m in model.modules())  # removed after an error too


def test_the_default_layer_is_the_last_convolution_before_the_head():
    x = torch.rand(2, 1, 32, 32)
    by_pixel = lambda out: out.flatten(1).sum(1)  # noqa: E731
    # small_cnn: its second convolution (its head is linear)
    assert default_layer(small_cnn((1, 8, 8), 10, [0.3], [0.4]), x[..., :8, :8], by_pixel) == "4"
    # unet_tiny: the last 3x3 convolution, not the 1x1 head whose output is the model's
    assert default_layer(UNetTiny((1, 32, 32), 3, [0.1], [0.25]), x, by_pixel) == "merge.0.3"
    # yolo_tiny declares its stride-8 neck, which feeds both heads; behind a wrapper the name is prefixed
    detector = YoloTiny((1, 32, 32), 2, [0.1], [0.25])
    assert default_layer(detector, x, None) == "td8"
    assert default_layer(nn.Sequential(nn.Identity(), detector), x, None) == "1.td8"
    with pytest.raises(AdvbenchError, match="has no convolution with a spatial output"):
        default_layer(nn.Sequential(nn.Flatten(), nn.Linear(1024, 2)), x, by_pixel)


class TwoHeads(nn.Module):
    """A trunk convolution read by two heads, each with a convolution of its own (SSD's, Faster R-CNN's shape)."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Conv2d(1, 4, 3, padding=1)
        self.box_branch, self.box_out = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
        self.cls_branch, self.cls_out = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 3, 1)
        for p in self.parameters():  # positive everywhere: every activation and gradient is, so no map is empty
            nn.init.constant_(p, 0.1)

    def forward(self, x):
        t = torch.relu(self.trunk(x))
        return {"box": self.box_out(torch.relu(self.box_branch(t))), "cls": self.cls_out(torch.relu(self.cls_branch(t)))}


def test_the_default_layer_of_several_terms_is_one_every_term_reaches():
    model, x = TwoHeads(), torch.rand(2, 1, 8, 8)
    terms = {name: (lambda out, name=name: out[name].flatten(1).sum(1)) for name in ("box", "cls")}
    assert default_layer(model, x, terms["box"]) == "box_branch"  # one term alone: its own branch
    assert default_layer(model, x, terms) == "trunk"  # both: the layer they share, not the last head's branch
    cams = gradcam_maps(model, x, terms, SimpleNamespace(method="gradcam", layer=None))
    assert set(cams) == {"box", "cls"} and all(cam.min() > 0 for cam in cams.values())
    assert not torch.allclose(cams["box"], cams["cls"])  # each term's own gradient weighs the shared maps


def test_gradcam_of_a_text_model_is_refused_before_any_work():
    cfg = plain(compose_config(["job=saliency", "checkpoint=x.pt", "dataset=synthetic_text", "model=textcnn",
                                "training=mixed", "saliency.method=gradcam"]))
    with pytest.raises(AdvbenchError, match="saliency.method=gradcam maps the feature maps of image models; "
                                            "dataset=synthetic_text poses text classification"):
        check_config(cfg)


def saliency(tmp_path, weights, *overrides) -> dict:
    """job=saliency on a plain state dict (random weights: the maps need no training), in this process."""
    code, err = cli("job=saliency", f"checkpoint={weights}", "saliency.n_examples=2",
                    "saliency.smoothgrad_samples=2", "progress=false", "threads=1", *overrides,
                    f"hydra.run.dir={tmp_path}/sal", cwd=tmp_path)
    assert code == 0, err
    assert png_size(tmp_path / "sal" / "saliency.png")[0] > 500
    return json.loads((tmp_path / "sal" / "results.json").read_text())


def test_gradcam_of_a_classifier_beside_its_input_gradients(tmp_path):
    torch.manual_seed(0)
    torch.save(small_cnn((1, 8, 8), 10, [0.3], [0.4]).state_dict(), tmp_path / "cnn.pt")
    results = saliency(tmp_path, tmp_path / "cnn.pt", "dataset=digits", "model=small_cnn",
                       "saliency.method=gradcam", "eval.attacks.pgd20.steps=2")
    scales = results["mean_abs_gradient"]
    assert list(scales) == ["|dL/dx|", "SmoothGrad", "Grad-CAM (loss)"] and scales["Grad-CAM (loss)"] > 0
    code, err = cli("job=saliency", f"checkpoint={tmp_path / 'cnn.pt'}", "dataset=digits", "model=small_cnn",
                    "saliency.method=gradcam", "saliency.layer=conv9", "saliency.n_examples=2", "progress=false",
                    f"hydra.run.dir={tmp_path}/bad", cwd=tmp_path)
    assert code == 2 and "e.g. 1, 4" in one_line_error(err, "saliency.layer=conv9: no such module in Sequential")
    assert not (tmp_path / "bad").exists()  # bad input, refused before the run began: no directory left behind


DET = ["dataset=digits_det", "model=yolo_tiny", "dataset.n_scenes=24", "dataset.n_test=4", "dataset.val_size=4",
       "eval.attacks.pgd20.steps=2"]


def test_gradcam_of_a_detector_has_one_map_per_loss_term(tmp_path):
    torch.manual_seed(0)
    torch.save(YoloTiny((1, 64, 64), 10, [0.1], [0.25]).state_dict(), tmp_path / "det.pt")
    scales = saliency(tmp_path, tmp_path / "det.pt", *DET, "saliency.method=gradcam")["mean_abs_gradient"]
    assert set(scales) == {"box", "obj", "cls", "total", "Grad-CAM box", "Grad-CAM obj", "Grad-CAM cls"}
    assert len({scales[f"Grad-CAM {term}"] for term in ("box", "obj", "cls")}) == 3  # three maps, not one


SEG = ["dataset=digits_seg", "model=unet_tiny", "eval=segmentation", "dataset.n_scenes=24", "dataset.n_test=4",
       "dataset.val_size=4", "eval.attacks.pgd10.steps=2"]


@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_saliency_of_a_segmenter(tmp_path, method):
    torch.manual_seed(0)
    torch.save(UNetTiny((1, 32, 32), 11, [0.1], [0.25]).state_dict(), tmp_path / "seg.pt")
    scales = saliency(tmp_path, tmp_path / "seg.pt", *SEG, f"saliency.method={method}")["mean_abs_gradient"]
    expected = ["|dL/dx|", "SmoothGrad"] + (["Grad-CAM (loss)"] if method == "gradcam" else [])
    assert list(scales) == expected and all(v > 0 for v in scales.values())
