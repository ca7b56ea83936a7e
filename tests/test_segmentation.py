"""Semantic segmentation: masks, the ignore index, mIoU, SegPGD and CosPGD, the CLI, torchvision's models."""
import json

import pytest
import torch
import torch.nn.functional as F

from advbench.attacks.spec import make_attack
from advbench.data.scenes import compose_scenes, digits_source
from advbench.models.segmenters import UNetTiny, torchvision_segmenter
from advbench.tasks.segmentation import Segmentation
from advbench.tasks.segmentation.metrics import IGNORE, Records, confusion, miou_of
from helpers import cli

TASK = Segmentation(11)
BINARY = Segmentation(2)  # digit or background: a model that segments well after seconds of training


@pytest.fixture(scope="module")
def canvases():
    x, y = digits_source()
    scenes = compose_scenes(x[:600], y[:600], 360, size=32, objects=(1, 2), scale=(0.8, 1.4), seed=0)
    return scenes["images"].float() / 255, scenes["masks"].long()


@pytest.fixture(scope="module")
def trained_unet(canvases):
    """unet_tiny trained clean (digit vs background) for a fixed number of steps on 320 canvases (seeded)."""
    x, masks = canvases
    torch.manual_seed(0)
    model = UNetTiny((1, 32, 32), 2, [0.1], [0.25], width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(4):
        for i in range(0, 320, 32):
            loss = BINARY.mean_loss(model(x[i:i + 32]), (masks[i:i + 32] > 0).long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def test_masks_move_with_the_pixels_and_padding_is_ignored():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 12, 12)
    masks = (x[:, 0] > 0.5).long() + 1  # the class is read off the pixel: any misalignment shows
    out, out_masks = TASK.augment(x, masks, torch.Generator().manual_seed(1))
    labelled = out_masks != IGNORE
    assert torch.equal(out_masks[labelled], (out[:, 0] > 0.5).long()[labelled] + 1)
    # padding pixels are exactly the ignored ones (the images are never exactly 0 elsewhere)
    assert torch.equal(~labelled, out[:, 0] == 0) and (~labelled).any()


def test_the_ignore_index_is_in_no_loss_and_no_metric():
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    masks[:, 0] = IGNORE
    other = logits.clone()
    other[:, :, 0] = torch.randn(2, 3, 4)  # change the outputs at the ignored pixels only
    assert torch.allclose(TASK.loss(logits, masks)["ce"], TASK.loss(other, masks)["ce"])
    expected = F.cross_entropy(logits[:, :, 1:], masks[:, 1:], reduction="none").flatten(1).mean(1)
    assert torch.allclose(TASK.loss(logits, masks)["ce"], expected)
    assert torch.equal(confusion(logits.argmax(1), masks, 3), confusion(other.argmax(1), masks, 3))
    assert confusion(logits.argmax(1), masks, 3).sum() == 2 * 12


def test_miou_of_a_perfect_prediction_is_one_and_of_a_known_case_exact():
    masks = torch.randint(0, 4, (3, 8, 8))
    assert miou_of(confusion(masks, masks, 4))[0] == 1.0
    truth = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    miou, iou = miou_of(confusion(pred, truth, 2))
    assert iou.tolist() == [0.5, 2 / 3] and miou == pytest.approx((0.5 + 2 / 3) / 2)


def test_records_keep_each_images_worst_case():
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[:, :2] = 1
    perfect = F.one_hot(masks, 2).permute(0, 3, 1, 2).float()
    records = Records(["a", "b"], 2, 2)
    records.add_clean([0, 1], perfect, masks)
    wrong = perfect.flip(1)  # every pixel wrong
    records.add_attack([0], wrong[:1])
    records.close("a", [0, 1])
    records.add_attack([1], perfect[1:])
    records.close("b", [0, 1])
    assert records.scores(records.worst, ["bg", "fg"])["pixel_acc"] == 0.5
    assert records.scores(records.clean, ["bg", "fg"])["miou"] == 1.0


def test_segpgd_and_cospgd_stay_in_the_ball_and_beat_fgsm(trained_unet, canvases):
    x, masks = canvases[0][320:352], (canvases[1][320:352] > 0).long()
    # measured: FGSM leaves mIoU at 0.52-0.58, SegPGD and CosPGD take it to 0.11-0.12, clean 0.96, on training
    # trajectories perturbed after every step (as another CPU's rounding would): margins wider than 0.2
    eps = 0.25
    miou = {}
    for name, attack in {"fgsm": make_attack("fgsm", eps=eps, task=BINARY),
                         "segpgd": make_attack("pgd", eps=eps, steps=10, random_start=True, task=BINARY,
                                               loss="segpgd"),
                         "cospgd": make_attack("pgd", eps=eps, steps=10, random_start=True, task=BINARY,
                                               loss="cospgd")}.items():
        torch.manual_seed(0)
        x_adv = attack(trained_unet, x, masks)
        assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            miou[name] = miou_of(confusion(trained_unet(x_adv).argmax(1), masks, 2))[0]
    with torch.no_grad():
        clean = miou_of(confusion(trained_unet(x).argmax(1), masks, 2))[0]
    assert clean > 0.85  # the model segments
    assert miou["segpgd"] < miou["fgsm"] - 0.2 and miou["cospgd"] < miou["fgsm"] - 0.2


def test_cli_run_on_digits_seg_writes_every_file(tmp_path):
    cli("dataset=digits_seg", "model=unet_tiny", "model.width=8", "training=adversarial", "attack=pgd",
        "attack.steps=2", "eval=segmentation", "eval.n_examples=24", "eval.eps_list=[4/255]", "epochs=2",
        "eps=8/255", "eval.save_examples=2", "dataset.n_scenes=160", "dataset.val_size=16", "progress=false",
        "threads=1", "eval.attacks.pgd10.steps=2", "eval.attacks.segpgd.steps=2", "eval.attacks.cospgd.steps=2",
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    run = tmp_path / "run"
    for name in ("results.json", "summary.md", "metrics.jsonl", "model.pt", "curves.png", "robustness_curve.png",
                 "adversarial_examples.png", "robust_flags.npz"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["metric_names"] == {"clean": "clean_miou", "robust": "robust_miou"}
    assert results["robust_miou"] <= results["clean_miou"]
    assert all(v <= results["clean_miou"] + 1e-9 for v in results["robust_miou_by_attack"].values())
    assert set(results["iou_per_class"]["clean"]) == {"background", *map(str, range(10))}


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50"])
def test_torchvision_segmenters_build_offline_and_give_logits(name):
    torch.manual_seed(0)
    model = torchvision_segmenter((1, 64, 64), 11, [0.5], [0.25], name=name).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 64, 64)).shape == (2, 11, 64, 64)
    x_adv = make_attack("pgd", eps=4 / 255, steps=1, task=TASK)(model, torch.rand(2, 1, 64, 64),
                                                                torch.randint(0, 11, (2, 64, 64)))
    assert x_adv.shape == (2, 1, 64, 64)


def _write_pair(images, masks, name, size=(20, 16), cls=1):
    from PIL import Image
    import numpy as np
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    mask = np.zeros((size[1], size[0]), np.uint8)
    pixels[4:10, 5:12] = 200
    mask[4:10, 5:12] = cls
    mask[0, :] = 255  # unlabelled
    Image.fromarray(pixels).save(images / f"{name}.jpg" if images.name == "JPEGImages" else images / f"{name}.png")
    Image.fromarray(mask, mode="L").save(masks / f"{name}.png")


def test_seg_folder_reads_images_and_class_index_masks(tmp_path):
    from omegaconf import OmegaConf

    from advbench.data import load_data
    from advbench.config import DatasetConf
    for split, n in (("train", 6), ("test", 2)):
        for i in range(n):
            _write_pair(tmp_path / split / "images", tmp_path / split / "masks", f"im{i}", cls=1 + i % 2)
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConf), {"name": "seg_folder", "path": str(tmp_path),
                          "image_size": 16, "val_size": 2, "categories": ["bg", "a", "b"], "mean": [0.5] * 3,
                          "std": [0.25] * 3})
    data = load_data(cfg)
    x, masks = data.test
    assert x.shape == (2, 3, 16, 16) and masks.shape == (2, 16, 16) and data.classes == ["bg", "a", "b"]
    assert (masks[:, 0] == IGNORE).all() and set(masks.unique().tolist()) == {0, 1, 2, IGNORE}
    assert data.task == "segmentation" and len(data.train[0]) == 4


def test_voc_loads_from_a_local_root(tmp_path):
    from omegaconf import OmegaConf

    from advbench.config import DatasetConf
    from advbench.data import load_data
    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split, names in (("train", ["a", "b", "c", "d"]), ("val", ["e", "f"])):
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for k, name in enumerate(names):
            _write_pair(base / "JPEGImages", base / "SegmentationClass", name, cls=15 if k % 2 else 8)
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConf), {"name": "voc", "root": str(tmp_path),
                          "image_size": 16, "val_size": 1, "mean": [0.5] * 3, "std": [0.25] * 3})
    data = load_data(cfg)
    assert data.classes[15] == "person" and data.n_classes == 21 and len(data.test[0]) == 2
    assert set(data.test[1].unique().tolist()) <= {0, 8, 15, IGNORE}


@pytest.mark.parametrize("mode", ["standard", "adversarial", "mixed", "free"])
def test_every_segmentation_training_mode_updates_the_model(mode, canvases):
    from omegaconf import OmegaConf

    from advbench.data.loaders import TensorLoader
    from advbench.training import Plan, build_mode, train_epoch
    from advbench.training.schedules import make_scheduler
    x, masks = (t[:32] for t in canvases)
    torch.manual_seed(0)
    model = UNetTiny((1, 32, 32), 11, [0.1], [0.25], width=4)
    before = [p.clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    attack = make_attack("fgsm", eps=8 / 255, task=TASK)
    stats = train_epoch(model, TensorLoader(x, masks, 16), build_mode(OmegaConf.create(
        {"name": mode, "adv_weight": 0.5, "replays": 2}), TASK), TASK, attack, optimizer,
        make_scheduler(optimizer, "constant", 4), torch.amp.GradScaler("cpu", enabled=False), Plan(),
        torch.device("cpu"), clean_sample=(x, masks))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert stats["train_loss"] > 0 and 0 <= stats["train_clean_acc"] <= 1


def test_the_python_api_attacks_a_segmenter_by_task_name(trained_unet, canvases):
    import advbench
    x, masks = canvases[0][:8], (canvases[1][:8] > 0).long()
    for name in ("cospgd", "segpgd"):
        x_adv = advbench.attack(name, eps=0.1, task="segmentation", steps=3)(trained_unet, x, masks)
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)
    targeted = advbench.attack("pgd", eps=0.1, task="segmentation", steps=2, targeted=True)
    assert targeted(trained_unet, x, masks).shape == x.shape
