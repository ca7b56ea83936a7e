"""random_flip and random_translate keep boxes on their objects and never touch their inputs."""
import torch

from box_checks import tight_box

from advbench.data.box_augment import random_flip, random_translate
from advbench.data.scenes import compose_scenes, digits_source


def _one_object_scenes(n=16):
    x, y = digits_source()
    out = compose_scenes(x[:200], y[:200], n_scenes=n, size=48, objects=(1, 1), seed=2)
    return out["images"], out["targets"], out["masks"]


def _copy(targets):
    return [{k: v.clone() for k, v in t.items()} for t in targets]


def test_flip_twice_is_identity_and_inputs_untouched():
    images, targets, masks = _one_object_scenes()
    before = images.clone(), _copy(targets), masks.clone()
    a = random_flip(images, targets, masks, generator=torch.Generator().manual_seed(1))
    b = random_flip(*a, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a[0], images)  # some images did flip
    assert torch.equal(b[0], images) and torch.equal(b[2], masks)
    assert all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(b[1], targets))
    assert torch.equal(images, before[0]) and torch.equal(masks, before[2])
    assert all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(targets, before[1]))


def test_flip_and_translate_boxes_stay_tight():
    images, targets, masks = _one_object_scenes()
    area = (masks != 0).sum((1, 2))
    g = torch.Generator().manual_seed(4)
    exact = 0
    for _ in range(3):
        images, targets, masks = random_flip(images, targets, masks, generator=g)
        images, targets, masks = random_translate(images, targets, masks, max_shift=6, generator=g)
        for m, t, a in zip(masks, targets, area):
            if not len(t["boxes"]):
                assert not (m != 0).any()
                continue
            box, tight = t["boxes"][0].tolist(), tight_box(m != 0)
            if (m != 0).sum() == a:  # the whole object is still in the image
                assert box == tight
                exact += 1
            else:  # part of it was pushed out: the box is clipped, so it still covers what is left
                assert box[0] <= tight[0] and box[1] <= tight[1] and box[2] >= tight[2] and box[3] >= tight[3]
    assert exact > 20


def test_translate_drops_box_that_leaves_and_clips_others():
    images = torch.zeros(1, 1, 10, 10, dtype=torch.uint8)
    masks = torch.zeros(1, 10, 10, dtype=torch.uint8)
    images[0, 0, 1:3, 1:3] = masks[0, 1:3, 1:3] = 1
    images[0, 0, 4:9, 5:8] = 200
    masks[0, 4:9, 5:8] = 2
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 4.0, 8.0, 9.0]]),
                "labels": torch.tensor([0, 1]), "scores": torch.tensor([5, 9])}]
    g = torch.Generator().manual_seed(0)
    for _ in range(50):  # draw until the shift moves left and up by at least 3
        gi, gt, gm = random_translate(images, targets, masks, max_shift=4, generator=g)
        if len(gt[0]["labels"]) == 1:
            break
    assert gt[0]["labels"].tolist() == [1] and gt[0]["scores"].tolist() == [9]
    assert gt[0]["boxes"][0].tolist() == tight_box(gm[0] != 0) == tight_box(gi[0, 0] != 0)
    assert set(gm[0].unique().tolist()) == {0, 2}
    assert len(targets[0]["labels"]) == 2


def test_float_images_and_empty_targets():
    images = torch.rand(3, 3, 8, 8)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(3)]
    g = torch.Generator().manual_seed(0)
    fi, ft, fm = random_flip(images, targets, generator=g)
    ti, tt, tm = random_translate(fi, ft, max_shift=2, generator=g)
    assert ti.dtype == torch.float32 and fm is None and tm is None
    assert all(t["boxes"].shape == (0, 4) for t in tt)
